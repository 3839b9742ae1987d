"""The prelude's losses against the Python they replaced, in float64: loss and gradients.

The references below are the deleted ``kdspec.ops.losses`` functions, kept here as plain torch
(log-probabilities in, as the compiler carried distributions). Every reduction, every kernel and
both eps forms are compared through compiled specs, on both sides' gradients.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tolerance import assert_close

from kdspec.api import load_method
from kdspec.compiler import compile_spec

D64 = torch.float64
T = 4.0


def _reduce(elem: torch.Tensor, reduction: str, batch: int) -> torch.Tensor:
    if reduction == "batchmean":
        return elem.sum() / batch
    return elem.mean() if reduction == "mean" else elem.sum()


def ref_kl(t, s, reduction="batchmean", eps=0.0):  # type: ignore[no-untyped-def]
    p_t = t.exp()
    if eps == 0.0:
        elem = p_t * torch.where(p_t > 0, t - s, torch.zeros_like(t))
    else:
        elem = p_t * torch.log((p_t + eps) / (s.exp() + eps))
    return _reduce(elem, reduction, t.shape[0])


def ref_soft_ce(t, s, reduction="batchmean"):  # type: ignore[no-untyped-def]
    p_t = t.exp()
    return _reduce(-p_t * torch.where(p_t > 0, s, torch.zeros_like(s)), reduction, t.shape[0])


def ref_lp(t, s, p=2.0, dim=None, squared=True, reduction="batchmean"):  # type: ignore[no-untyped-def]
    d = s - t
    if dim is None:
        d, dims = d.reshape(d.shape[0], -1), 1
    else:
        dims = dim
    norms = d.abs().pow(p).sum(dim=dims) if squared else torch.linalg.vector_norm(d, p, dims)
    return _reduce(norms, reduction, t.shape[0])


def ref_mmd(t, s, kernel="poly", gamma=1.0):  # type: ignore[no-untyped-def]
    def k(a, b):  # type: ignore[no-untyped-def]
        dot = torch.bmm(a, b.transpose(1, 2))
        if kernel == "poly":
            return dot.pow(2)
        if kernel == "linear":
            return dot
        d2 = (a.pow(2).sum(-1).unsqueeze(2) + b.pow(2).sum(-1).unsqueeze(1) - 2 * dot).clamp(min=0)
        return torch.exp(-gamma * d2)

    t, s = t.flatten(2), s.flatten(2)
    return k(t, t).mean() + k(s, s).mean() - 2 * k(s, t).mean()


def ref_pearson(t, s, dim=1, eps=1e-8):  # type: ignore[no-untyped-def]
    tc, sc = t - t.mean(dim, keepdim=True), s - s.mean(dim, keepdim=True)
    return 1 - F.cosine_similarity(sc, tc, dim=dim, eps=eps).mean()


def ref_ab(t, s, margin=1.0, reduction="batchmean"):  # type: ignore[no-untyped-def]
    neg = ((s > -margin) & (t <= 0)).to(s.dtype)
    pos = ((s <= margin) & (t > 0)).to(s.dtype)
    elem = (s + margin).pow(2) * neg + (s - margin).pow(2) * pos
    return _reduce(elem, reduction, t.shape[0])


def ref_smooth_l1(t, s, beta=1.0, reduction="mean"):  # type: ignore[no-untyped-def]
    return _reduce(F.smooth_l1_loss(s, t, reduction="none", beta=beta), reduction, t.shape[0])


def ref_info_nce(t, s, T=0.07):  # type: ignore[no-untyped-def]
    zt, zs = F.normalize(t.flatten(1), dim=1), F.normalize(s.flatten(1), dim=1)
    return F.cross_entropy(zs @ zt.t() / T, torch.arange(zs.shape[0]))


def log_probs(z: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(z / T, dim=-1)


def channel_dist(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.flatten(2), dim=2)


def rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D64)


LOGITS = ("logits", "softmax(T=4)", (8, 10), log_probs)
MAPS = ("stage[1]", "", (4, 3, 5, 5), None)
EMB = ("embedding", "", (8, 6), None)
CASES = [
    *(
        (f"kl(reduction={r}{e})", LOGITS, lambda t, s, r=r, e=e: ref_kl(t, s, r, 1e-3 if e else 0))
        for r in ("batchmean", "mean", "sum")
        for e in ("", ", eps=1e-3")
    ),
    *(
        (f"soft_ce(reduction={r})", LOGITS, lambda t, s, r=r: ref_soft_ce(t, s, r))
        for r in ("batchmean", "mean", "sum")
    ),
    *(
        (f"{n}(reduction={r})", MAPS, lambda t, s, f=f, r=r: _reduce(f(s - t), r, t.shape[0]))
        for n, f in (("mse", lambda d: d.pow(2)), ("l1", lambda d: d.abs()))
        for r in ("batchmean", "mean", "sum")
    ),
    ("smooth_l1", MAPS, ref_smooth_l1),
    ("smooth_l1(beta=0.3, reduction=sum)", MAPS, lambda t, s: ref_smooth_l1(t, s, 0.3, "sum")),
    ("cosine", MAPS, lambda t, s: (1 - F.cosine_similarity(s.flatten(1), t.flatten(1))).mean()),
    ("lp", MAPS, ref_lp),
    (
        "lp(p=3, squared=false, reduction=mean)",
        MAPS,
        lambda t, s: ref_lp(t, s, 3.0, None, False, "mean"),
    ),
    ("lp(dim=1, squared=false)", MAPS, lambda t, s: ref_lp(t, s, 2.0, 1, False)),
    ("lp(dim=[1, 2], reduction=sum)", MAPS, lambda t, s: ref_lp(t, s, 2.0, (1, 2), True, "sum")),
    ("frobenius", EMB, lambda t, s: (s - t).pow(2).sum() / t.shape[0]),
    *(
        (
            f"mmd(kernel={k}, gamma=0.5)",
            ("stage[1]", "channel_dist", (4, 3, 5, 5), channel_dist),
            lambda t, s, k=k: ref_mmd(t, s, k, 0.5),
        )
        for k in ("poly", "linear", "rbf")
    ),
    *(
        (f"pearson(dim={d})", LOGITS, lambda t, s, d=d: ref_pearson(t.exp(), s.exp(), d))
        for d in (0, 1)
    ),
    ("ab_hinge", MAPS, ref_ab),
    ("ab_hinge(margin=0.5, reduction=mean)", MAPS, lambda t, s: ref_ab(t, s, 0.5, "mean")),
    ("info_nce(T=0.1)", EMB, lambda t, s: ref_info_nce(t, s, 0.1)),
]


@pytest.mark.parametrize(("call", "where", "ref"), CASES, ids=[c[0] for c in CASES])
def test_a_prelude_loss_equals_the_python_it_replaced(call, where, ref) -> None:  # type: ignore[no-untyped-def]
    tap, knowledge, shape, prepare = where
    t, s = rand(*shape, seed=1).requires_grad_(), rand(*shape, seed=2).requires_grad_()
    text = (
        f"method m {{\n  teacher t\n  student s\n"
        f"  transfer v: {knowledge} from t.{tap} to s.{tap} with {call}\n}}"
    )
    batch = {f"t.{tap}": t, f"s.{tap}": s}
    d = compile_spec(
        load_method("m.kd", text=text), None, {k: v.detach() for k, v in batch.items()}
    )
    got = d(batch).loss
    want = ref(prepare(t), prepare(s)) if prepare else ref(t, s)
    assert_close(got, want, rtol=1e-10)
    for x, a, b in zip(
        (t, s), _grads(got, [t, s]), _grads(want, [t, s]), strict=True
    ):  # ab_hinge: the teacher only masks, no gradient on either side
        assert_close(a, b, rtol=1e-10, what=f"d/d{'ts'[x is s]}")


def _grads(loss: torch.Tensor, xs: list[torch.Tensor]) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, xs, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(xs, grads, strict=True)]


def ref_cross_entropy(logits, labels, label_smoothing=0.0):  # type: ignore[no-untyped-def]
    """The deleted Python `cross_entropy` (kdspec/ops/losses.py), verbatim."""
    if logits.dim() > 2:
        logits = logits.reshape(-1, logits.shape[-1])
        labels = labels.reshape(-1)
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("shape", [(8, 10), (3, 5, 7)], ids=["classes", "tokens"])
@pytest.mark.parametrize("causal", [False, True])
def test_prelude_cross_entropy_equals_the_python_it_replaced(smoothing, shape, causal) -> None:  # type: ignore[no-untyped-def]
    """Per sample, and per token of token data (-100 at padding and prompt tokens, labels
    shifted by one for a causal LM): loss and gradients."""
    z = rand(*shape, seed=3).requires_grad_()
    g = torch.Generator().manual_seed(4)
    labels = torch.randint(0, shape[-1], shape[:-1], generator=g)
    kw = f"(label_smoothing={smoothing})" if smoothing else ""
    text = f"method m {{\n  student s\n  supervise ce: s.logits with cross_entropy{kw}\n}}"
    batch: dict[str, object] = {"s.logits": z, "labels": labels}
    want_labels = labels
    if len(shape) == 3:
        labels[0, :2] = -100  # a prompt
        attention = torch.ones(shape[:2], dtype=torch.long)
        attention[1, -2:] = 0  # padding
        labels[1, -2:] = -100
        batch["attention_mask"] = attention
        if causal:  # position i predicts token i + 1; the last predicts nothing
            want_labels = torch.full_like(labels, -100)
            want_labels[:, :-1] = labels[:, 1:]
    elif causal:
        pytest.skip("causal shifts apply to token data only")
    d = compile_spec(
        load_method("m.kd", text=text),
        None,
        {k: v for k, v in batch.items() if k != "s.logits"} | {"s.logits": z.detach()},
    )
    d.causal = causal
    got = d(batch).loss
    want = ref_cross_entropy(z, want_labels, smoothing)
    assert_close(got, want, rtol=1e-10)
    assert_close(_grads(got, [z])[0], _grads(want, [z])[0], rtol=1e-10, what="d/dz")


def test_prelude_cross_entropy_ignores_rows_labelled_minus_100_off_token_data() -> None:
    """[B, C] logits whose labels say -100 (no class): left out of the sum and of the mean,
    as F.cross_entropy's ignore_index, with no token mask to drop them first."""
    z = rand(6, 4, seed=5).requires_grad_()
    labels = torch.tensor([0, -100, 3, 2, -100, 1])
    text = (
        "method m {\n  student s\n"
        "  supervise ce: s.logits with cross_entropy(label_smoothing=0.2)\n}"
    )
    batch = {"s.logits": z, "labels": labels}
    d = compile_spec(
        load_method("m.kd", text=text), None, {"s.logits": z.detach(), "labels": labels}
    )
    got = d(batch).loss
    want = ref_cross_entropy(z, labels, 0.2)
    assert_close(got, want, rtol=1e-10)
    assert_close(_grads(got, [z])[0], _grads(want, [z])[0], rtol=1e-10, what="d/dz")
