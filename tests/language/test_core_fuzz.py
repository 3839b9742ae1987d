"""Random expressions of the core never crash the checker: diagnostics or nothing."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdspec.api import check_source
from kdspec.source import SourceFile
from kdspec.vocabulary.functions import PRIMITIVES

TAPS = ["t.logits", "s.logits", "t.embedding", "s.stage[1]", "t.stage[-1]", "B", "C", "2", "x"]
AXES = ["batch", "channel", "space", "class", "token", "batch2", "nope", "[batch, class]"]
OPS = ["+", "-", "*", "/", "^", ">", "<=", "=="]


def _call(name: str, args: list[str], over: str | None) -> str:
    kw = f", over={over}" if over is not None else ""
    return f"{name}({', '.join(args)}{kw})" if args else f"{name}(over={over or 'batch'})"


exprs = st.recursive(
    st.sampled_from(TAPS),
    lambda inner: st.one_of(
        st.builds(lambda a, op, b: f"({a} {op} {b})", inner, st.sampled_from(OPS), inner),
        st.builds(
            _call,
            st.sampled_from(sorted(PRIMITIVES)),
            st.lists(inner, min_size=0, max_size=3),
            st.one_of(st.none(), st.sampled_from(AXES)),
        ),
    ),
    max_leaves=6,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=exprs, weight=exprs, body=exprs)
def test_the_checker_is_total_over_core_expressions(value: str, weight: str, body: str) -> None:
    text = (
        f"def f(x, y) = {body}\n"
        "method m {\n  teacher t\n  student s\n"
        f"  let v = {value}\n"
        f"  transfer a: from t.logits to v with f weight {weight}\n"
        "}\n"
    )
    _, diagnostics = check_source(SourceFile("fuzz.kd", text))
    for d in diagnostics:
        assert d.code.startswith("KD"), d


SAME_AXES = [
    "exp",
    "log",
    "abs",
    "sqrt",
    "sigmoid",
    "softplus",
    "relu",
    "tanh",
    "stopgrad",
    "grad_reverse",
    "label_mask",
    "softmax",
    "log_softmax",
    "normalize",
    "topk",
    "rank",
]
ALONG_CLASS = {"softmax", "log_softmax", "normalize", "topk", "rank"}

per_class = st.recursive(
    st.sampled_from(["x", "y", "2", "B", "classes"]),
    lambda inner: st.one_of(
        st.builds(lambda a, op, b: f"({a} {op} {b})", inner, st.sampled_from(OPS), inner),
        st.builds(
            lambda f, a: f"{f}({a}, over=class)" if f in ALONG_CLASS else f"{f}({a})",
            st.sampled_from(SAME_AXES),
            inner,
        ),
    ),
    max_leaves=5,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=per_class, pipeline=st.sampled_from(["", "softmax(T=2) "]))
def test_what_checks_clean_compiles_and_runs(body: str, pipeline: str) -> None:
    """A loss built at random from the primitives checks clean and runs, or says why."""
    import torch

    from kdspec.compiler import compile_spec
    from kdspec.diagnostics import KdError, Severity

    text = (
        f"def f(x, y) = sum(x * 0 + {body}, over=class)\n"
        "method m {\n  teacher t\n  student s\n"
        f"  transfer a: {pipeline}from t.logits to s.logits with f weight 1 / B\n"
        "}\n"
    )
    lowered, diagnostics = check_source(SourceFile("fuzz.kd", text))
    if any(d.severity is Severity.ERROR for d in diagnostics):
        return  # e.g. `label_mask(2)`: a number has no class axis (KD313)
    g = torch.Generator().manual_seed(0)
    tensors = {
        "t.logits": torch.randn(4, 5, generator=g),
        "s.logits": torch.randn(4, 5, generator=g),
    }
    y = torch.randint(0, 5, (4,), generator=g)
    try:
        d = compile_spec(lowered[0], None, {**tensors, "labels": y}, num_classes=5)
        value = d.evaluate_terms(tensors, y)["a"]
    except KdError as exc:
        assert all(x.code.startswith("KD4") for x in exc.diagnostics), exc
        return
    assert value.shape == ()
