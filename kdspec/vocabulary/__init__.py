"""The bottom layer of kdspec: what every function of the language is, as pure data.

Nothing here imports anything above it (no ir, graph, passes, compiler, torch or lark), so
every layer may read operator facts from one place. :mod:`kdspec.vocabulary.functions` is the
table of named functions.
"""

from kdspec.vocabulary.functions import (
    ALIASES,
    CLAIM_DIMENSIONS,
    FUNCTIONS,
    KINDS,
    PRELUDE_IMPL,
    RAW_KINDS,
    REQUIRED,
    ROLE_KINDS,
    TAP_IO,
    TAP_POINTS,
    TENSOR_KINDS,
    Fn,
    Param,
    by_category,
)

__all__ = [
    "ALIASES",
    "CLAIM_DIMENSIONS",
    "FUNCTIONS",
    "KINDS",
    "PRELUDE_IMPL",
    "RAW_KINDS",
    "REQUIRED",
    "ROLE_KINDS",
    "TAP_IO",
    "TAP_POINTS",
    "TENSOR_KINDS",
    "Fn",
    "Param",
    "by_category",
]
