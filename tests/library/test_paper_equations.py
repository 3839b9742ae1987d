"""Library specs of methods torchdistill lacks, against their papers' equations.

Each test compiles a spec from ``specs/`` (functional mode where the method reads plain tensors,
on real tiny models where it needs them, e.g. OFD's margins from the teacher's batch norms) and
compares its weighted loss, and the gradients with respect to the student side, with the
method's objective written out inline below from the paper or the authors' reference code. The
inline equations use torch only, never :mod:`kdspec.ops`; learned parts (adapters, branches,
gates, projections) are read off the compiled spec so both sides use the same weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from library_setup import SPECS
from tolerance import assert_close
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from kdspec.api import load_method
from kdspec.compiler import Distiller, Progress, compile_spec
from kdspec.compiler.nodes import AdapterNode
from kdspec.zoo import build_model

B, K = 8, 10


def rand(*shape: int, seed: int = 0, grad: bool = True) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(grad)


def labels(n: int = B, classes: int = K, seed: int = 1) -> Tensor:
    return torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(seed))


def functional(name: str, batch: dict[str, Any], **kw: Any) -> Distiller:
    overrides = kw.pop("overrides", None)
    low = load_method(SPECS / f"{name}.kd", overrides=overrides)
    example = {k: _detach(v) for k, v in batch.items()}
    return compile_spec(low, None, example, **kw)


def _detach(v: Any) -> Any:
    if isinstance(v, Tensor):
        return v.detach()
    if isinstance(v, list):
        return [t.detach() for t in v]
    return v


def adapters(d: Distiller, func: str) -> list[nn.Module]:
    """The built modules of every `func` adapter, in term order (shared lets counted once)."""
    out: list[nn.Module] = []
    seen: set[int] = set()
    for term in d.terms.values():
        for node in term.modules():
            if isinstance(node, AdapterNode) and node.func == func and id(node) not in seen:
                seen.add(id(node))
                out.extend(node.adapters)
    return out


def close(actual: Tensor, expected: Tensor, what: str, rtol: float | None = None) -> None:
    assert_close(actual, expected, rtol=rtol, what=what)


def same_loss_and_grads(
    spec: Tensor, paper: Tensor, wrt: Iterable[Tensor], rtol: float | None = None
) -> None:
    close(spec.detach(), paper.detach(), "loss", rtol)
    wrt = list(wrt)
    g_spec = torch.autograd.grad(spec, wrt, retain_graph=True, allow_unused=True)
    g_paper = torch.autograd.grad(paper, wrt, allow_unused=True)
    for i, (a, b) in enumerate(zip(g_spec, g_paper, strict=True)):
        assert (a is None) == (b is None), f"gradient {i}: used by one side only"
        if a is not None:
            close(a, b, f"d/d input {i}", rtol)


# --- the equations' building blocks, in plain torch -----------------------------------------


def ce(z: Tensor, y: Tensor) -> Tensor:
    return -torch.log_softmax(z, dim=1).gather(1, y.view(-1, 1)).mean()


def kl(p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) summed over classes, averaged over the rows (``batchmean``)."""
    return (torch.xlogy(p, p) - p * log_q).sum() / p.shape[0]


def kd(teacher: Tensor, student: Tensor, T: float) -> Tensor:
    """Hinton's T^2 KL(softmax(t/T) || softmax(s/T))."""
    return T**2 * kl(torch.softmax(teacher / T, dim=1), torch.log_softmax(student / T, dim=1))


# --- response-based --------------------------------------------------------------------------


def test_dkd_target_and_non_target_terms_with_warmup() -> None:
    """DKD (Zhao et al.; mdistiller `dkd_loss`): alpha TCKD + beta NCKD, T^2, warm-up 20."""
    t, s, y = rand(B, K, seed=2, grad=False), rand(B, K, seed=3), labels()
    d = functional("dkd", {"t.logits": t, "s.logits": s, "labels": y})
    out = d({"t.logits": t, "s.logits": s, "labels": y}, progress=Progress(epoch=5.0))
    T, alpha, beta = 4.0, 1.0, 8.0
    gt = F.one_hot(y, K).bool()
    p_t, p_s = torch.softmax(t / T, 1), torch.softmax(s / T, 1)

    def binary(p: Tensor) -> Tensor:
        return torch.stack([(p * gt).sum(1), (p * ~gt).sum(1)], dim=1)

    b_t, b_s = binary(p_t), binary(p_s)
    tckd = (b_t * (b_t.log() - b_s.log())).sum() * T**2 / B
    nckd_t = torch.softmax(t / T - 1000.0 * gt, 1)
    nckd = kl(nckd_t, torch.log_softmax(s / T - 1000.0 * gt, 1)) * T**2
    paper = ce(s, y) + min(5.0 / 20.0, 1.0) * (alpha * tckd + beta * nckd)
    same_loss_and_grads(out.loss, paper, [s])


def test_dml_each_peer_learns_from_labels_and_the_other() -> None:
    """DML (Zhang et al.): CE + KL(p_other || p_self), the other peer fixed."""
    p1, p2, y = rand(B, K, seed=2), rand(B, K, seed=3), labels()
    batch = {"p1.logits": p1, "p2.logits": p2, "labels": y}
    out = functional("dml", batch)(batch)
    q1, q2 = torch.softmax(p1, 1), torch.softmax(p2, 1)
    paper = (
        ce(p1, y)
        + ce(p2, y)
        + kl(q2.detach(), torch.log_softmax(p1, 1))
        + kl(q1.detach(), torch.log_softmax(p2, 1))
    )
    same_loss_and_grads(out.loss, paper, [p1, p2])


def test_ban_generation_matches_the_teacher_distribution() -> None:
    """BAN (Furlanello et al.): KL to the previous generation's outputs, T = 1."""
    t, s = rand(B, K, seed=2, grad=False), rand(B, K, seed=3)
    batch = {"t.logits": t, "s.logits": s, "labels": labels()}
    out = functional("ban", batch)(batch)
    same_loss_and_grads(out.loss, kd(t, s, 1.0), [s])


def test_takd_each_hop_is_hinton_kd() -> None:
    """TAKD (Mirzadeh et al.): T -> TA, then TA -> S, each alpha T^2 KL + (1 - alpha) CE."""
    t, ta, s, y = rand(B, K, seed=2), rand(B, K, seed=3), rand(B, K, seed=4), labels()
    batch = {"t.logits": t, "ta.logits": ta, "s.logits": s, "labels": y}
    d = functional("takd", batch)
    T, alpha = 4.0, 0.9
    d.set_stage("assistant")
    paper = alpha * kd(t, ta, T) + (1 - alpha) * ce(ta, y)
    same_loss_and_grads(d(batch).loss, paper, [ta])
    d.set_stage("student")
    paper = alpha * kd(ta.detach(), s, T) + (1 - alpha) * ce(s, y)
    same_loss_and_grads(d(batch).loss, paper, [s])


def test_multi_teacher_matches_the_mean_of_soft_targets() -> None:
    """You et al. / Hinton ensembles: KL to the average of the teachers' softened outputs."""
    ts = [rand(B, K, seed=i, grad=False) for i in (2, 3, 4)]
    s, y = rand(B, K, seed=5), labels()
    batch = {"t1.logits": ts[0], "t2.logits": ts[1], "t3.logits": ts[2], "s.logits": s}
    out = functional("multi_teacher", {**batch, "labels": y})({**batch, "labels": y})
    T, alpha = 4.0, 0.9
    p = torch.stack([torch.softmax(t / T, 1) for t in ts]).mean(0)
    paper = alpha * T**2 * kl(p, torch.log_softmax(s / T, 1)) + (1 - alpha) * ce(s, y)
    same_loss_and_grads(out.loss, paper, [s])


def test_cskd_same_class_prediction_teaches_with_stop_gradient() -> None:
    """CS-KD (Yun et al.; alinlab/cs-kd KDLoss): CE + lambda T^2 KL(p(x'; T) || p(x; T))."""
    s, s_pair, y = rand(B, K, seed=2), rand(B, K, seed=3), labels()
    batch = {"s.logits": s, "s[pair].logits": s_pair, "labels": y}
    data = TensorDataset(torch.zeros(2 * K, 1, 8, 8), torch.arange(2 * K) % K)
    out = functional("cskd", batch, train_data=data)(batch)
    paper = ce(s, y) + 1.0 * kd(s_pair.detach(), s, 4.0)
    same_loss_and_grads(out.loss, paper, [s, s_pair])


@pytest.mark.parametrize("reference", [False, True])
def test_tfkd_self_training(reference: bool) -> None:
    """Tf-KD_self (Yuan et al.): (1 - alpha) CE + alpha T^2 KL; and the authors' `loss_kd_self`
    (nn.KLDivLoss() averaging over classes, multiplier 50) through two parameters."""
    t, s, y = rand(B, K, seed=2, grad=False), rand(B, K, seed=3), labels()
    batch = {"t.logits": t, "s.logits": s, "labels": y}
    overrides = {"reduction": "mean", "multiplier": 50} if reference else None
    out = functional("tfkd_self", batch, overrides=overrides)(batch)
    T, alpha = 6.0, 0.95
    if reference:
        d_kl = nn.KLDivLoss()(F.log_softmax(s / T, dim=1), F.softmax(t / T, dim=1)) * T * T * 50
        paper = (1.0 - alpha) * F.cross_entropy(s, y) + alpha * d_kl
    else:
        paper = (1 - alpha) * ce(s, y) + alpha * kd(t, s, T)
    same_loss_and_grads(out.loss, paper, [s])


def test_tfkd_reg_virtual_teacher() -> None:
    """Tf-KD_reg (Yuan et al.): a on the true class, (1 - a)/(K - 1) elsewhere, softened by T."""
    s, y = rand(B, K, seed=2), labels()
    batch = {"s.logits": s, "labels": y}
    out = functional("tfkd_reg", batch, num_classes=K)(batch)
    T, alpha, a = 20.0, 0.1, 0.99
    p_d = torch.full((B, K), (1 - a) / (K - 1), dtype=torch.float64)
    p_d[torch.arange(B), y] = a
    soft = kl(torch.softmax(p_d / T, 1), torch.log_softmax(s / T, 1))
    paper = (1 - alpha) * ce(s, y) + alpha * soft
    same_loss_and_grads(out.loss, paper, [s])


def test_mean_teacher_consistency_and_labelled_ce() -> None:
    """Mean Teacher (Tarvainen & Valpola): w(t) ||softmax(s) - softmax(ema)||^2 + CE (labelled)."""
    s, m, y = rand(B, K, seed=2), rand(B, K, seed=3, grad=False), labels()
    index = torch.tensor([0, 1, 5, 7, 13, 20, 26, 30])
    batch = {"s[a].logits": s, "m[b].logits": m, "labels": y, "index": index}
    out = functional("mean_teacher", batch)(batch, progress=Progress(epoch=2.0))
    labelled = ((index * 2654435761) % 2**32).double() / 2**32 < 0.1  # kdspec's fixed subset
    assert 0 < int(labelled.sum()) < B
    consistency = (torch.softmax(s, 1) - torch.softmax(m, 1)).pow(2).mean()
    paper = 1.0 * (2.0 / 5.0) * consistency + ce(s[labelled], y[labelled])
    same_loss_and_grads(out.loss, paper, [s])


# --- self-distillation with learned parts ----------------------------------------------------


def _bn_train(v: Tensor, bn: nn.BatchNorm1d) -> Tensor:
    mean, var = v.mean(0), v.var(0, unbiased=False)
    return (v - mean) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias


def test_one_gated_ensemble_teaches_every_branch() -> None:
    """ONE (Lan et al.; authors' train.py): sum of branch CEs + ensemble CE + T^2 sum KL."""
    x, z0, y = rand(B, 16, 4, 4, seed=2), rand(B, K, seed=3), labels()
    batch = {"s.stage[-2]": x, "s.logits": z0, "labels": y}
    d = functional("one", batch, num_classes=K)
    out = d(batch)
    (branches,) = adapters(d, "branches")
    (gate,) = adapters(d, "gate")
    zs = [z0] + [head(x) for head in branches.heads]
    v = F.linear(x.mean(dim=(2, 3)), gate.gate.fc.weight, gate.gate.fc.bias)
    g = torch.softmax(F.relu(_bn_train(v, gate.gate.bn)), dim=1)  # [B, m]
    z_e = sum(g[:, i : i + 1] * z for i, z in enumerate(zs))
    T = 3.0
    paper = sum(ce(z, y) for z in zs) + ce(z_e, y)
    paper = paper + sum(kd(z_e.detach(), z, T) for z in zs)
    same_loss_and_grads(out.loss, paper, [x, z0])


def test_byot_exits_learn_labels_soft_targets_and_features() -> None:
    """BYOT (Zhang et al.): CE + sum_i (1-a) CE(q_i) + a T^2 KL(q_C||q_i) + l ||F_i - F_C||^2."""
    f1, f2, f3 = rand(B, 8, 8, 8, seed=2), rand(B, 16, 4, 4, seed=3), rand(B, 32, 2, 2, seed=4)
    s, y = rand(B, K, seed=5), labels()
    batch = {"s.stage[..-2]": [f1, f2], "s.stage[-1]": f3, "s.logits": s, "labels": y}
    d = functional("byot", batch, num_classes=K)
    out = d(batch)
    heads, hints = adapters(d, "classifier_head"), adapters(d, "conv_bn")
    T, alpha, lam = 3.0, 0.3, 0.03
    paper = ce(s, y)
    for f, head, hint in zip([f1, f2], heads, hints, strict=True):
        q = head(f)
        paper = paper + (1 - alpha) * ce(q, y) + alpha * kd(s.detach(), q, T)
        paper = paper + lam * (hint(f) - f3.detach()).pow(2).mean()
    same_loss_and_grads(out.loss, paper, [f1, f2, f3, s])


# --- feature-based ----------------------------------------------------------------------------


def test_nst_squared_mmd_with_polynomial_kernel() -> None:
    """NST (Huang & Wang; RepDistiller NSTLoss): lambda/2 sum_layers MMD^2, (x.y)^2 kernel."""
    ts = [rand(B, 16, 4, 4, seed=2, grad=False), rand(B, 32, 2, 2, seed=3, grad=False)]
    ss = [rand(B, 8, 4, 4, seed=4), rand(B, 12, 2, 2, seed=5)]
    batch = {"t.stage[..]": ts, "s.stage[..]": ss, "t.logits": rand(B, K, grad=False)}
    batch |= {"s.logits": rand(B, K, seed=6, grad=False), "labels": labels()}
    out = functional("nst", batch)(batch)

    def mmd2(fs: Tensor, ft: Tensor) -> Tensor:
        s = F.normalize(fs.flatten(2), dim=2)
        t = F.normalize(ft.flatten(2), dim=2)

        def k(a: Tensor, b: Tensor) -> Tensor:
            return (a @ b.transpose(1, 2)).pow(2).mean()

        return k(t, t) + k(s, s) - 2 * k(s, t)

    paper = 50 / 2 * sum(mmd2(fs, ft) for fs, ft in zip(ss, ts, strict=True))
    same_loss_and_grads(out.grad_terms["nst"], paper, ss)


def _margin(bn: nn.BatchNorm2d) -> Tensor:
    """OFD margin (Heo et al.): E[x | x < 0] for x ~ N(beta, gamma^2), or -3|gamma|."""
    s, m = bn.weight.detach().abs().double(), bn.bias.detach().double()
    normal = torch.distributions.Normal(0.0, 1.0)
    cdf = normal.cdf(-m / s)
    pdf = torch.exp(normal.log_prob(m / s))
    return torch.where(cdf > 0.001, m - s * pdf / cdf, -3 * s).float()


def test_ofd_partial_l2_with_bn_margins_on_real_models() -> None:
    """OFD (Heo et al.; mdistiller `feat_loss`) on a cnn_small teacher and a resnet8 student."""
    t_model = build_model("cnn_small", num_classes=K, in_channels=1)
    s_model = build_model("resnet8", num_classes=K, in_channels=1)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(B, 1, 8, 8, generator=g), labels()
    for bn in (m for m in t_model.modules() if isinstance(m, nn.BatchNorm2d)):
        nn.init.normal_(bn.weight, 1.0, 0.3, generator=g)
        nn.init.normal_(bn.bias, 0.0, 0.5, generator=g)
    low = load_method(SPECS / "ofd.kd")
    d = compile_spec(low, {"t": t_model, "s": s_model}, (x, y))
    out = d((x, y))

    def preacts(model: nn.Module, paths: list[str]) -> tuple[list[Tensor], Tensor]:
        got: dict[str, Tensor] = {}
        handles = [
            model.get_submodule(p).register_forward_hook(
                lambda mod, args, res, p=p: got.__setitem__(p, args[0])
            )
            for p in paths
        ]
        try:
            logits = model(x)
        finally:
            for h in handles:
                h.remove()
        return [got[p] for p in paths], logits

    t_model.eval()
    with torch.no_grad():
        t_feats, _ = preacts(t_model, [f"stage{k}.relu_out" for k in (1, 2, 3)])
    s_feats, s_logits = preacts(s_model, [f"layer{k}.0.relu_out" for k in (1, 2, 3)])
    margins = [_margin(t_model.get_submodule(f"stage{k}.bn2")) for k in (1, 2, 3)]
    connectors = adapters(d, "conv_bn")  # terms ofd3, ofd2, ofd1: stages 3, 2, 1
    paper = ce(s_logits, y)
    for k, w, conn in zip((3, 2, 1), (1.0, 0.5, 0.25), connectors, strict=True):
        src, tgt = conn(s_feats[k - 1]), t_feats[k - 1]
        m = margins[k - 1].view(1, -1, 1, 1)
        feat = (
            (src - m).pow(2) * ((src > m) & (tgt <= m))
            + (src - tgt).pow(2) * ((src > tgt) & (tgt > m) & (tgt <= 0))
            + (src - tgt).pow(2) * (tgt > 0)
        )
        paper = paper + 0.001 * w * feat.sum() / B
    params = [p for p in s_model.parameters()] + [p for c in connectors for p in c.parameters()]
    same_loss_and_grads(out.loss, paper, params)  # float32: the dtype's tolerance


def test_mgd_masked_generation() -> None:
    """MGD (Yang et al.; yzd-v/MGD `get_dis_loss`): alpha sum (G(M . align(S)) - T)^2 / N."""
    t, s, y = rand(B, 16, 4, 4, seed=2, grad=False), rand(B, 8, 4, 4, seed=3), labels()
    z = rand(B, K, seed=4)
    batch = {"t.stage[-1]": t, "s.stage[-1]": s, "t.logits": z.detach(), "s.logits": z, "labels": y}
    d = functional("mgd", batch)
    torch.manual_seed(7)
    out = d(batch)
    (align,) = adapters(d, "conv1x1")
    (gen,) = adapters(d, "generator")
    conv_a = align[0]
    c1, _, c2 = gen.layers[0]
    torch.manual_seed(7)
    aligned = F.conv2d(s, conv_a.weight, conv_a.bias)
    mat = torch.rand((B, 16, 1, 1), dtype=torch.float64)
    masked = aligned * torch.where(mat < 0.15, 0.0, 1.0)
    new = F.conv2d(F.relu(F.conv2d(masked, c1.weight, c1.bias, padding=1)), c2.weight, c2.bias,
                   padding=1)  # fmt: skip
    paper = 0.00007 * (new - t).pow(2).sum() / B + ce(z, y)
    same_loss_and_grads(out.loss, paper, [s, z])


def test_semckd_attention_weighted_cross_layer_mse() -> None:
    """SemCKD (Chen et al.; DefangChen/SemCKD SelfA + SemCKDLoss), plus KD and CE."""
    ts = [rand(B, 16, 8, 8, seed=2, grad=False), rand(B, 32, 4, 4, seed=3, grad=False)]
    ts.append(rand(B, 64, 2, 2, seed=4, grad=False))
    ss = [rand(B, 8, 8, 8, seed=5), rand(B, 16, 4, 4, seed=6)]
    zt, zs, y = rand(B, K, seed=7, grad=False), rand(B, K, seed=8), labels()
    batch = {"t.stage[..]": ts, "s.stage[..]": ss, "t.logits": zt, "s.logits": zs, "labels": y}
    d = functional("semckd", batch)
    out = d(batch)
    mod = d.terms["semckd"].learned[0]

    def embed(mlp: nn.Module, f: Tensor) -> Tensor:
        flat = f.reshape(B, -1)
        sim = flat @ flat.t()  # [B, B]
        h = F.relu(F.linear(sim, mlp.linear1.weight, mlp.linear1.bias))
        e = F.linear(h, mlp.linear2.weight, mlp.linear2.bias)
        return e / e.norm(dim=1, keepdim=True)

    keys = torch.stack([embed(k, f) for k, f in zip(mod.keys, ts, strict=True)], 2)
    queries = torch.stack([embed(q, f) for q, f in zip(mod.queries, ss, strict=True)], 1)
    att = torch.softmax(queries @ keys, dim=-1)  # [B, n_s, n_t]
    per = torch.zeros(B, len(ss), len(ts), dtype=torch.float64)
    for i, fs in enumerate(ss):
        for j, ft in enumerate(ts):
            s_h, t_h = fs.shape[2], ft.shape[2]
            if s_h > t_h:
                src, tgt = mod.proj[i][j](F.adaptive_avg_pool2d(fs, t_h)), ft
            else:
                src, tgt = mod.proj[i][j](fs), F.adaptive_avg_pool2d(ft, s_h)
            per[:, i, j] = (src - tgt).pow(2).reshape(B, -1).mean(-1)
    sem = (att * per).sum() / (B * len(ss))
    paper = 400 * sem + kd(zt, zs, 4.0) + ce(zs, y)
    same_loss_and_grads(out.loss, paper, [*ss, zs])


# --- NLP ----------------------------------------------------------------------------------------


L, H = 6, 12  # tokens, heads


def heads(x: Tensor) -> Tensor:
    b, n, dim = x.shape
    return x.view(b, n, H, dim // H).transpose(1, 2)  # [B, H, L, d]


def scores(q: Tensor, k: Tensor) -> Tensor:
    qh, kh = heads(q), heads(k)
    return qh @ kh.transpose(-1, -2) / math.sqrt(qh.shape[-1])


def _path(role: str, layer: int, part: str) -> str:
    return f'{role}."bert.encoder.layer.{layer}.attention.self.{part}"'


def test_tinybert_intermediate_and_prediction_stages() -> None:
    """TinyBERT (Jiao et al.): MSE on attention scores, W_h-mapped hidden states and
    W_e-mapped embeddings (layer m <- 3m), then soft cross-entropy on the logits (t = 1)."""
    t_layers, s_layers = [2, 5, 8, 11], [0, 1, 2, 3]
    batch: dict[str, Any] = {}
    qk: dict[str, Tensor] = {}
    for i, (lt, ls) in enumerate(zip(t_layers, s_layers, strict=True)):
        for part in ("query", "key"):
            qk[_path("t", lt, part)] = rand(B, L, 24, seed=10 + 4 * i + (part == "key"), grad=False)
            qk[_path("s", ls, part)] = rand(B, L, 12, seed=50 + 4 * i + (part == "key"))
    t_hidden = [rand(B, L, 24, seed=100 + i, grad=False) for i in range(12)]
    s_hidden = [rand(B, L, 12, seed=200 + i) for i in range(4)]
    e_t, e_s = rand(B, L, 24, seed=300, grad=False), rand(B, L, 12, seed=301)
    z_t, z_s, y = rand(B, 3, seed=302, grad=False), rand(B, 3, seed=303), labels(classes=3)
    batch = {
        **qk,
        "t.stage[..]": t_hidden,
        "s.stage[..]": s_hidden,
        't."bert.embeddings"': e_t,
        's."bert.embeddings"': e_s,
        "t.logits": z_t,
        "s.logits": z_s,
        "labels": y,
    }
    d = functional("tinybert", batch)
    linears = adapters(d, "linear")  # emb (W_e), then hidden (one W_h per student layer)
    w_e, w_h = linears[0], linears[1:]
    d.set_stage("intermediate")
    spec = d(batch).loss
    paper = F.mse_loss(F.linear(e_s, w_e.weight, w_e.bias), e_t)
    for m in range(4):
        w = w_h[m]
        paper = paper + F.mse_loss(F.linear(s_hidden[m], w.weight, w.bias), t_hidden[3 * m + 2])
        a_t = scores(qk[_path("t", t_layers[m], "query")], qk[_path("t", t_layers[m], "key")])
        a_s = scores(qk[_path("s", s_layers[m], "query")], qk[_path("s", s_layers[m], "key")])
        paper = paper + F.mse_loss(a_s, a_t)
    student = [e_s, *s_hidden, *(v for k, v in qk.items() if k.startswith("s."))]
    same_loss_and_grads(spec, paper, student)
    d.set_stage("prediction")
    paper = -(torch.softmax(z_t, 1) * torch.log_softmax(z_s, 1)).sum() / B
    same_loss_and_grads(d(batch).loss, paper, [z_s])


def test_distilbert_triple_loss() -> None:
    """DistilBERT (Sanh et al.; HF distillation/distiller.py): 5 KL(T=2)T^2 + 2 MLM + 1 cosine."""
    V = 30
    z_t, z_s = rand(B, L, V, seed=2, grad=False), rand(B, L, V, seed=3)
    h_t, h_s = rand(B, L, 24, seed=4, grad=False), rand(B, L, 24, seed=5)
    y = torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(6))
    y[:, ::2] = -100
    batch = {"t.logits": z_t, "s.logits": z_s, "t.stage[-1]": h_t, "s.stage[-1]": h_s, "labels": y}
    out = functional("distilbert", batch)(batch)
    T = 2.0
    loss_ce = (
        nn.KLDivLoss(reduction="batchmean")(
            F.log_softmax(z_s.reshape(-1, V) / T, dim=-1), F.softmax(z_t.reshape(-1, V) / T, dim=-1)
        )
        * T**2
    )
    loss_mlm = nn.CrossEntropyLoss(ignore_index=-100)(z_s.reshape(-1, V), y.reshape(-1))
    target = torch.ones(B * L, dtype=torch.float64)
    loss_cos = nn.CosineEmbeddingLoss()(h_s.reshape(-1, 24), h_t.reshape(-1, 24), target)
    paper = 5.0 * loss_ce + 2.0 * loss_mlm + 1.0 * loss_cos
    same_loss_and_grads(out.loss, paper, [z_s, h_s])


def test_minilm_attention_and_value_relation_kl() -> None:
    """MiniLM (Wang et al.): last-layer KL of softmax(QK^T/sqrt d) and softmax(VV^T/sqrt d)."""
    t = {
        part: rand(B, L, 24, seed=i, grad=False) for i, part in enumerate(("query", "key", "value"))
    }
    s = {part: rand(B, L, 12, seed=10 + i) for i, part in enumerate(("query", "key", "value"))}
    batch = {
        f'{r}.stage[-1]."attention.self.{p}"': v
        for r, d in (("t", t), ("s", s))
        for p, v in d.items()
    }
    out = functional("minilm", batch)(batch)

    def rel_kl(a_t: Tensor, a_s: Tensor) -> Tensor:
        p_t, log_s = torch.softmax(a_t, -1), torch.log_softmax(a_s, -1)
        return F.kl_div(log_s, p_t, reduction="sum") / (B * H * L)

    paper = rel_kl(scores(t["query"], t["key"]), scores(s["query"], s["key"]))
    paper = paper + rel_kl(scores(t["value"], t["value"]), scores(s["value"], s["value"]))
    same_loss_and_grads(out.loss, paper, list(s.values()))


def test_bert_pkd_skip_patient_loss() -> None:
    """BERT-PKD (Sun et al.), PKD-Skip: student layer j <- teacher layer 2j ([CLS])."""
    t_layers = [rand(B, L, 24, seed=i, grad=False) for i in range(10)]  # layers 1..10 of 12
    s_layers = [rand(B, L, 24, seed=20 + i) for i in range(5)]  # layers 1..5 of 6
    z_t, z_s, y = rand(B, 3, seed=40, grad=False), rand(B, 3, seed=41), labels(classes=3)
    batch = {"t.stage[..-3]": t_layers, "s.stage[..-2]": s_layers, "t.logits": z_t}
    batch |= {"s.logits": z_s, "labels": y}
    out = functional("bert_pkd", batch)(batch)
    T, alpha, beta = 10.0, 0.5, 100.0
    soft = -(torch.softmax(z_t / T, 1) * torch.log_softmax(z_s / T, 1)).sum() / B
    pt = 0.0
    for j in range(1, 6):
        h_s, h_t = s_layers[j - 1][:, 0], t_layers[2 * j - 1][:, 0]
        diff = h_s / h_s.norm(dim=1, keepdim=True) - h_t / h_t.norm(dim=1, keepdim=True)
        pt = pt + diff.pow(2).sum() / B
    paper = (1 - alpha) * ce(z_s, y) + alpha * soft + beta * pt
    same_loss_and_grads(out.loss, paper, [*s_layers, z_s])


# --- composition ------------------------------------------------------------------------------


def test_crd_kd_composes_crd_and_hinton_kd() -> None:
    """CRD+KD (RepDistiller -a 1 -b 0.8): CE 1, CRD 0.8, KD at alpha = 1 (T^2 = 16)."""
    low = load_method(SPECS / "crd_kd.kd")
    terms = {t.name: t for t in low.method.terms}
    assert set(terms) == {"crd", "ce", "kd"}
    g = torch.Generator().manual_seed(0)
    batch: dict[str, Any] = {
        "t.embedding": torch.randn(B, 16, generator=g, dtype=torch.float64),
        "s.embedding": torch.randn(B, 8, generator=g, dtype=torch.float64),
        "t.logits": rand(B, K, seed=2, grad=False),
        "s.logits": rand(B, K, seed=3),
        "labels": labels(),
        "index": torch.arange(B),
    }
    d = compile_spec(low, None, _detach_all(batch), num_samples=64)
    assert {n: d.weight(n, None) for n in terms} == {"crd": 0.8, "ce": 1.0, "kd": 16.0}
    raw = d.raw_terms(batch)
    s = batch["s.logits"]
    same_loss_and_grads(16.0 * raw["kd"], kd(batch["t.logits"], s, 4.0), [s])


def _detach_all(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: _detach(v) for k, v in batch.items()}
