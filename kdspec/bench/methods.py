"""Benchmark: compiled step / hand-written step for Hinton, AT, FitNets, RKD, CRD and DML.

For each method the spec in specs/ is compiled onto zoo models and a hand-written PyTorch loop
does the same (same models, data, optimiser, losses written by hand in RepDistiller's style, the
adapters copied from the compiled ones). Both start from equal weights; their first-step losses
must agree to 1e-5 (relative), else the script fails. The two variants then alternate, in
interleaved rounds (the order flips every round), and the median over rounds of the per-round
ratio of mean step times is printed with the spread, the machine and the versions
(hinton_cached: the cached compiled step against a student-only step).

Run: `kdspec bench steps [--rounds 7] [--steps 5] [--teacher resnet56]
[--student resnet20] [--batch 64] [--methods hinton,at,...]`. Ratios only: absolute times on a
shared machine say little.
"""

from __future__ import annotations

import argparse
import atexit
import copy
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdspec._resources import library_dir
from kdspec.api import load_method
from kdspec.compiler import compile_spec
from kdspec.compiler.hooks import TapSession
from kdspec.compiler.teacher_cache import CacheSpec
from kdspec.zoo import build_model

Step = Callable[[], torch.Tensor]
SPECS = library_dir()
METHODS = (
    "hinton",
    "at",
    "fitnets_hint",
    "fitnets_kd",
    "rkd",
    "crd",
    "dml",
    "hinton_cached",
    "hinton_cached_disk",
    "hinton_fill",
    "teacher_hint",
    "teacher_kd",
)
# hinton_cached: teacher logits from Distiller.cache_frozen_outputs(), timed against a
# student-only step (forward, cross-entropy, backward, SGD): the floor a cache can reach.
# hinton_cached_disk: the same from a disk cache (one memory-mapped file) in fp16.
# hinton_fill: the filling epoch: a disk-cached step whose samples are all new (teacher run,
# rows written) against the uncached compiled step.
# teacher_hint / teacher_kd: the teacher's forward compiled for inference (stopped after its
# last tapped module, batch norm folded) against the eager teacher's whole no-grad forward,
# reading FitNets' hint (stage 2) / Hinton's logits; "loss" is the tapped tensor's abs-sum.


# --- hand-written losses (RepDistiller style) ------------------------------------------------


def feats(m: Any, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """A CIFAR resnet's three stage outputs, embedding and logits (RepDistiller's is_feat)."""
    h = m.relu(m.bn1(m.conv1(x)))
    f1 = m.layer1(h)
    f2 = m.layer2(f1)
    f3 = m.layer3(f2)
    emb = m.flatten(m.avgpool(f3))
    return [f1, f2, f3], emb, m.fc(emb)


def kd(zs: torch.Tensor, zt: torch.Tensor, T: float) -> torch.Tensor:
    return F.kl_div(F.log_softmax(zs / T, 1), F.softmax(zt / T, 1), reduction="batchmean") * T * T


def at(f: torch.Tensor) -> torch.Tensor:
    return F.normalize(f.pow(2).mean(1).view(f.size(0), -1))


def pdist(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    sq = e.pow(2).sum(dim=1)
    prod = e @ e.t()
    res = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * prod).clamp(min=eps).sqrt().clone()
    res[range(len(e)), range(len(e))] = 0
    return res


def rkd(s: torch.Tensor, t: torch.Tensor, w_dist: float, w_angle: float) -> torch.Tensor:
    with torch.no_grad():
        td = pdist(t)
        td = td / td[td > 0].mean()
    d = pdist(s)
    d = d / d[d > 0].mean()
    loss_d = F.smooth_l1_loss(d, td)
    with torch.no_grad():
        tv = F.normalize(t.unsqueeze(0) - t.unsqueeze(1), p=2, dim=2)
        ta = torch.bmm(tv, tv.transpose(1, 2)).view(-1)
    sv = F.normalize(s.unsqueeze(0) - s.unsqueeze(1), p=2, dim=2)
    sa = torch.bmm(sv, sv.transpose(1, 2)).view(-1)
    return w_dist * loss_d + w_angle * F.smooth_l1_loss(sa, ta)


def crd_hand(crd: Any, vt: torch.Tensor, vs: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """RepDistiller's ContrastMemory + ContrastLoss: gather the K+1 rows, then score them."""
    b, n = vs.shape[0], crd.num_samples
    idx = torch.randint(n, (b, crd.k + 1))
    idx[:, 0] = index
    w_t = torch.index_select(crd.memory_t, 0, idx.view(-1)).view(b, crd.k + 1, -1)
    out_s = torch.exp(torch.bmm(w_t, vs.unsqueeze(2)).squeeze(2) / crd.T)
    w_s = torch.index_select(crd.memory_s, 0, idx.view(-1)).view(b, crd.k + 1, -1)
    out_t = torch.exp(torch.bmm(w_s, vt.unsqueeze(2)).squeeze(2) / crd.T)
    if crd.z[0] < 0:
        crd.z[0] = out_s.detach().mean() * n
    if crd.z[1] < 0:
        crd.z[1] = out_t.detach().mean() * n
    mpn = crd.k / n

    def nce(p: torch.Tensor) -> torch.Tensor:
        log_d1 = torch.log(p[:, 0] / (p[:, 0] + mpn + crd.eps))
        log_d0 = torch.log(mpn / (p[:, 1:] + mpn + crd.eps))
        return -(log_d1.sum() + log_d0.sum()) / b

    loss = nce(out_s / crd.z[0]) + nce(out_t / crd.z[1])
    with torch.no_grad():
        for memory, v in ((crd.memory_s, vs), (crd.memory_t, vt)):
            moved = memory[index] * crd.momentum + v.detach() * (1 - crd.momentum)
            memory[index] = F.normalize(moved, p=2.0, dim=1, eps=0.0)
    return loss


# --- the two variants of one method ---------------------------------------------------------


def _spec(method: str) -> tuple[str, str]:
    """Spec file and stage of a benchmark entry."""
    if method == "fitnets_hint":
        return "fitnets", "hints"
    if method == "fitnets_kd":
        return "fitnets", "distill"
    if method.startswith("hinton_"):
        return "hinton", ""
    return method, ""


def setup(
    method: str, teacher: str, student: str, batch: int, num_samples: int, k: int
) -> tuple[Step, Step, Step]:
    """(compiled step, hand-written step, timing baseline), each returning its loss."""
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 100, (batch,))
    index = torch.randperm(num_samples)[:batch]
    if method.startswith("teacher_"):
        return _teacher_forward(method, teacher, student, x, y, index)
    name, stage = _spec(method)
    if method == "dml":
        models = {"p1": build_model(student, 100, 3), "p2": build_model(student, 100, 3)}
    else:
        models = {"t": build_model(teacher, 100, 3).eval(), "s": build_model(student, 100, 3)}
    lowered = load_method(SPECS / f"{name}.kd", overrides={"nce_k": k} if method == "crd" else None)
    d = compile_spec(lowered, models, (x, y, index), num_samples=num_samples)
    d.set_stage(stage or d.method.effective_stages()[0].name)
    d.train()
    if method == "hinton_cached":
        d.cache_frozen_outputs()
    if method in ("hinton_cached_disk", "hinton_fill"):
        folder = Path(tempfile.mkdtemp(prefix="kdspec-bench-"))
        atexit.register(shutil.rmtree, folder, True)
        fp16 = method == "hinton_cached_disk"
        spec = CacheSpec(store="disk", folder=folder, dtype="fp16" if fp16 else "fp32")
        d.cache_frozen_outputs(spec=spec, identity={"bench": method})
    # the hand loop owns a copy with the compiler's hooks removed: plain modules, same weights
    h = copy.deepcopy(d)
    for m in h.modules():
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
    names = {id(p): n for n, p in d.named_parameters()}
    hand_params = dict(h.named_parameters())
    opt_c = torch.optim.SGD(d.trainable_parameters(), lr=0.05, momentum=0.9)
    opt_h = torch.optim.SGD(
        [hand_params[names[id(p)]] for p in d.trainable_parameters()], lr=0.05, momentum=0.9
    )
    batch_ = (x, y, index)
    fresh = [0]  # hinton_fill: every step reads samples the cache has not seen

    def compiled() -> torch.Tensor:
        if method == "hinton_fill":
            fresh[0] += 1
            new = (torch.arange(batch) + fresh[0] * batch) % num_samples
            out = d((x, y, new))
        else:
            out = d(batch_)
        opt_c.zero_grad(set_to_none=True)
        out.loss.backward()
        opt_c.step()
        d.after_step()
        return out.loss.detach()

    roles = h.roles
    if method == "dml":
        p1, p2 = roles["p1"].train(), roles["p2"].train()

        def loss_h() -> torch.Tensor:
            z1, z2 = p1(x), p2(x)
            return (
                F.cross_entropy(z1, y)
                + F.cross_entropy(z2, y)
                + kd(z1, z2.detach(), 1.0)
                + kd(z2, z1.detach(), 1.0)
            )
    else:
        t, s = roles["t"].eval(), roles["s"].train()
        terms: Any = h.terms

        def loss_h() -> torch.Tensor:
            with torch.no_grad():
                ft, et, zt = feats(t, x)
            fs, es, zs = feats(s, x)
            if method in ("hinton", "fitnets_kd") or method.startswith("hinton_"):
                return 0.9 * kd(zs, zt, 4.0) + 0.1 * F.cross_entropy(zs, y)
            if method == "at":
                return F.cross_entropy(zs, y) + sum(
                    500.0 * (at(a) - at(b)).pow(2).mean() for a, b in zip(fs, ft, strict=True)
                )
            if method == "fitnets_hint":
                reg = terms["hint"].target.inner.adapters[0]
                return 0.5 * F.mse_loss(reg(fs[1]), ft[1], reduction="sum") / x.shape[0]
            if method == "rkd":
                return F.cross_entropy(zs, y) + rkd(es, et, 25.0, 50.0)
            if method == "crd":
                term = terms["crd"]
                vt = term.source.inner.adapters[0](et)
                vs = term.target.inner.adapters[0](es)
                return F.cross_entropy(zs, y) + 0.8 * crd_hand(term.learned[0], vt, vs, index)
            raise ValueError(method)

    def hand() -> torch.Tensor:
        loss = loss_h()
        opt_h.zero_grad(set_to_none=True)
        loss.backward()
        opt_h.step()
        return loss.detach()

    if method == "hinton_fill":  # against the compiled step without the cache
        plain = copy.deepcopy(d)
        plain.cache_frozen_outputs(False)
        opt_p = torch.optim.SGD(plain.trainable_parameters(), lr=0.05, momentum=0.9)

        def uncached() -> torch.Tensor:
            out = plain(batch_)
            opt_p.zero_grad(set_to_none=True)
            out.loss.backward()
            opt_p.step()
            return out.loss.detach()

        return compiled, uncached, uncached
    if method not in ("hinton_cached", "hinton_cached_disk"):
        return compiled, hand, hand
    s_only = copy.deepcopy(h.roles["s"]).train()
    opt_s = torch.optim.SGD(s_only.parameters(), lr=0.05, momentum=0.9)

    def student_only() -> torch.Tensor:
        loss = F.cross_entropy(s_only(x), y)
        opt_s.zero_grad(set_to_none=True)
        loss.backward()
        opt_s.step()
        return loss.detach()

    return compiled, hand, student_only


def _teacher_forward(
    method: str, teacher: str, student: str, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor
) -> tuple[Step, Step, Step]:
    """The teacher's forward as compiled for inference, and its eager no-grad forward."""
    models = {"t": build_model(teacher, 100, 3).eval(), "s": build_model(student, 100, 3)}
    _fake_statistics(models["t"])
    name, stage = ("fitnets", "hints") if method == "teacher_hint" else ("hinton", "")
    d = compile_spec(load_method(SPECS / f"{name}.kd"), models, (x, y, index))
    d.set_stage(stage or d.method.effective_stages()[0].name)
    d.train()
    d.fold_batch_norm = True
    t = models["t"]
    points = d._needed[("t", None)]
    plan = d._inference_plan("t", points, x)
    if not plan.folded:
        raise SystemExit(f"{method}: no batch norm was folded in `{teacher}`")

    def compiled() -> torch.Tensor:
        session = TapSession(t, points)
        with torch.no_grad(), session, plan:
            session.run(x, stop_early=True)
        return session.get(points[0]).abs().sum()

    def eager() -> torch.Tensor:
        with torch.no_grad():
            f, _, z = feats(t, x)
        return (f[1] if method == "teacher_hint" else z).abs().sum()

    return compiled, eager, eager


def _fake_statistics(model: nn.Module) -> None:
    """Batch-norm statistics away from their initial values (a trained teacher's are)."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def bench(
    method: str,
    *,
    teacher: str,
    student: str,
    batch: int,
    rounds: int,
    steps: int,
    num_samples: int,
    k: int,
) -> dict[str, Any]:
    """Median compiled/hand-written ratio over interleaved rounds, after a first-step check."""
    compiled, hand, baseline = setup(method, teacher, student, batch, num_samples, k)
    torch.manual_seed(1)
    lc = float(compiled())
    torch.manual_seed(1)
    lh = float(hand())
    if abs(lc - lh) > 1e-5 * max(1.0, abs(lh)):
        raise SystemExit(f"{method}: first-step losses differ: compiled {lc!r}, hand {lh!r}")
    ratios = []
    for r in range(rounds):
        times: dict[str, float] = {}
        pair = (("c", compiled), ("h", baseline))
        for name, step in pair if r % 2 else pair[::-1]:
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            times[name] = (time.perf_counter() - t0) / steps
        ratios.append(times["c"] / times["h"])
    return {
        "method": method,
        "loss_compiled": lc,
        "loss_hand": lh,
        "median": statistics.median(ratios),
        "min": min(ratios),
        "max": max(ratios),
    }


def machine() -> str:
    return (
        f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"python {platform.python_version()}, {platform.system()}"
    )


def arguments(description: str, rounds: int, methods: tuple[str, ...]) -> argparse.ArgumentParser:
    """The options the step and memory benchmarks share (models, batch, CRD sizes, methods)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--teacher", default="resnet56")
    ap.add_argument("--student", default="resnet20")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--num-samples", type=int, default=50000, help="CRD memory rows")
    ap.add_argument("--nce-k", type=int, default=16384, help="CRD negatives")
    ap.add_argument("--methods", default=",".join(methods))
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = arguments(__doc__.split("\n")[0], rounds=7, methods=METHODS)
    ap.add_argument("--steps", type=int, default=5, help="steps per variant per round")
    args = ap.parse_args(argv)
    print(f"machine: {machine()}")
    print(
        f"{args.teacher} -> {args.student}, batch {args.batch}, {args.rounds} interleaved rounds "
        f"of {args.steps} steps per variant; ratio = compiled / hand-written step"
    )
    print(f"{'method':<20}{'median':>8}{'min':>8}{'max':>8}  first-step loss (both)")
    for method in args.methods.split(","):
        r = bench(
            method,
            teacher=args.teacher,
            student=args.student,
            batch=args.batch,
            rounds=args.rounds,
            steps=args.steps,
            num_samples=args.num_samples,
            k=args.nce_k,
        )
        print(
            f"{method:<20}{r['median']:8.3f}{r['min']:8.3f}{r['max']:8.3f}"
            f"  {r['loss_compiled']:.6g}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
