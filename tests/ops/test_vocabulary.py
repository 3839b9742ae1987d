"""One source of truth: every vocabulary entry against the function that implements it.

The table in :mod:`kdspec.vocabulary` declares each function's parameters and defaults; here
every declaration is bound against the signature of its declared implementation, so the table,
the code and the docs cannot drift apart (as `embed.dim` and `mask.ratio` once did).
"""

from __future__ import annotations

import importlib
import inspect

import pytest

from kdspec.vocabulary import FUNCTIONS, REQUIRED

# Implementations that dispatch many entries (schedules, views, mappings, role initialisers)
# read their parameters from the call, not from their own signature.
_DISPATCHERS = {"schedule", "view", "subset", "mapping", "role_init"}
# Arguments every implementation of a category receives from the compiler, not from the spec.
# (`margin`: OFD's margins from the teacher's batch norms; `i`: the layer a resize is for.)
_CONTEXT = {
    "axes",
    "labels",
    "sources",  # each row's sample, and the view it is: from the batch structure (views, k > 1)
    "views",
    "num_samples",
    "in_shape",
    "out_shape",
    "inputs",
    "hint",
    "ctx",
    "num_classes",
    "generator",
    "margin",
    "i",
}


def _resolve(impl: str):
    module, _, attr = impl.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_every_function_names_an_implementation_that_exists(name: str) -> None:
    fn = FUNCTIONS[name]
    assert fn.impl, f"`{name}` declares no implementation"
    assert callable(_resolve(fn.impl))


@pytest.mark.parametrize(
    "name", sorted(n for n, f in FUNCTIONS.items() if f.category not in _DISPATCHERS)
)
def test_declared_parameters_and_defaults_match_the_implementation(name: str) -> None:
    fn = FUNCTIONS[name]
    sig = inspect.signature(_resolve(fn.impl))
    params = sig.parameters
    for pname, decl in fn.params.items():
        assert pname in params, f"`{name}` declares `{pname}`, `{fn.impl}` has no such parameter"
        default = params[pname].default
        if decl.default is REQUIRED:
            assert default is inspect.Parameter.empty, (
                f"`{name}.{pname}`: required, code has a default"
            )
        else:
            assert default is not inspect.Parameter.empty, (
                f"`{name}.{pname}`: the table says {decl.default!r}, the code requires it"
            )
            assert default == decl.default, (
                f"`{name}.{pname}`: the table says {decl.default!r}, the code {default!r}"
            )
    # Whatever else the implementation takes must have a default (or come from the compiler).
    positional = [
        p for p in params.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    for p in params.values():
        if p.name in fn.params or p.name in _CONTEXT or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p in positional[: max(fn.inputs, 0)]:
            continue  # a tensor input
        assert p.default is not inspect.Parameter.empty, (
            f"`{fn.impl}` requires `{p.name}`, which `{name}` does not declare"
        )
