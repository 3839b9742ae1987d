"""One source of truth: every vocabulary entry against the function that implements it.

The table in :mod:`kdspec.vocabulary` declares each function's parameters and defaults; here
every declaration is bound against the signature of its declared implementation, so the table,
the code and the docs cannot drift apart (as `embed.dim` and `mask.ratio` once did).
"""

from __future__ import annotations

import importlib
import inspect

import pytest

from kdspec.vocabulary import FUNCTIONS, PRELUDE_IMPL, REQUIRED

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


def _prelude_params(name: str) -> dict[str, object] | None:
    """The keyword parameters (name -> default text) of the prelude's `def name`, if any."""
    from kdspec.ir.compose import module_defs, prelude_files

    for path in prelude_files():
        found, errors = module_defs(path)
        assert not errors, f"{path}: {errors}"
        if name in found:
            fn, _ = found[name]
            return {p.name.name: p.default for p in fn.params if p.default is not None}
    return None


def _resolve(impl: str):
    if impl.startswith(PRELUDE_IMPL):
        params = _prelude_params(impl.removeprefix(PRELUDE_IMPL))
        assert params is not None, f"no `def` for `{impl}` in kdspec/prelude"
        return params
    module, _, attr = impl.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_every_function_names_an_implementation_that_exists(name: str) -> None:
    fn = FUNCTIONS[name]
    assert fn.impl, f"`{name}` declares no implementation"
    impl = _resolve(fn.impl)
    assert callable(impl) or fn.impl.startswith(PRELUDE_IMPL)


@pytest.mark.parametrize(
    "name", sorted(n for n, f in FUNCTIONS.items() if f.impl.startswith(PRELUDE_IMPL))
)
def test_a_prelude_def_declares_the_parameters_and_defaults_of_its_entry(name: str) -> None:
    fn = FUNCTIONS[name]
    params = _prelude_params(name)
    assert params is not None
    assert set(params) == set(fn.params), f"`{name}`: def {set(params)}, table {set(fn.params)}"
    for pname, decl in fn.params.items():
        default = params[pname]
        if hasattr(default, "id"):  # a bare word: `none`, `true`, `false`, `mean`
            value = {"none": None, "true": True, "false": False}.get(default.id, default.id)
        else:  # a number or a quoted word
            value = default.value if isinstance(default.value, str) else float(default.value)
        assert value == decl.default, f"`{name}.{pname}`: table {decl.default!r}, def {value!r}"


@pytest.mark.parametrize(
    "name", sorted(n for n, f in FUNCTIONS.items() if f.category not in _DISPATCHERS)
)
def test_declared_parameters_and_defaults_match_the_implementation(name: str) -> None:
    fn = FUNCTIONS[name]
    if fn.impl.startswith(PRELUDE_IMPL):
        return  # test_a_prelude_def_declares_the_parameters_and_defaults_of_its_entry
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
