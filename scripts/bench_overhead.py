"""Benchmark: a compiled spec trains as fast as a hand-written loop.

Runs Hinton KD (specs/hinton.kd) and FitNets' hint term as (a) a hand-written PyTorch loop
and (b) the compiled Distiller, on the same models, data and optimiser, side by side in this
process, alternating the two to share warm-up effects, and prints the time per step of each
and their ratio (and peak GPU memory on CUDA). Run: `python scripts/bench_overhead.py
[--device cuda] [--steps 30] [--teacher resnet20] [--student resnet8]`.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from kdspec.api import load_method
from kdspec.compiler import compile_spec
from kdspec.zoo import build_model


def hand_written_hinton(t, s, opt, x, y, T=4.0, alpha=0.9):
    with torch.no_grad():
        zt = t(x)
    zs = s(x)
    kd = F.kl_div(F.log_softmax(zs / T, 1), F.softmax(zt / T, 1), reduction="batchmean")
    loss = alpha * T * T * kd + (1 - alpha) * F.cross_entropy(zs, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def compiled_step(d, opt, batch):
    out = d(batch)
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    opt.step()
    d.after_step()
    return out.loss


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--teacher", default="resnet20")
    ap.add_argument("--student", default="resnet8")
    args = ap.parse_args()
    dev = args.device
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32, device=dev)
    y = torch.randint(0, 100, (args.batch,), device=dev)
    t = build_model(args.teacher, 100, 3).to(dev).eval()
    s_hand = build_model(args.student, 100, 3).to(dev)
    s_comp = copy.deepcopy(s_hand)
    d = compile_spec(load_method("specs/hinton.kd"), {"t": t, "s": s_comp}, (x, y), device=dev)
    d.set_stage("main")
    opt_hand = torch.optim.SGD(s_hand.parameters(), lr=0.05, momentum=0.9)
    opt_comp = torch.optim.SGD(d.trainable_parameters(), lr=0.05, momentum=0.9)
    times: dict[str, list[float]] = {"hand-written": [], "kdspec": []}
    peaks: dict[str, int] = {}
    for step in range(args.steps + 5):
        for name in ("hand-written", "kdspec") if step % 2 else ("kdspec", "hand-written"):
            if dev.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            sync(dev)
            t0 = time.perf_counter()
            if name == "kdspec":
                compiled_step(d, opt_comp, (x, y))
            else:
                hand_written_hinton(t, s_hand, opt_hand, x, y)
            sync(dev)
            if step >= 5:  # warm-up steps are not timed
                times[name].append(time.perf_counter() - t0)
            if dev.startswith("cuda"):
                peaks[name] = max(peaks.get(name, 0), torch.cuda.max_memory_allocated())
    hand = statistics.median(times["hand-written"])
    comp = statistics.median(times["kdspec"])
    print(
        f"device {dev}, {args.teacher} -> {args.student}, batch {args.batch}, "
        f"{args.steps} timed steps (median)"
    )
    print(f"  hand-written loop: {hand * 1000:8.2f} ms/step")
    print(f"  kdspec Distiller:  {comp * 1000:8.2f} ms/step")
    print(f"  ratio kdspec / hand-written: {comp / hand:.3f}")
    if peaks:
        print(
            f"  peak GPU memory: hand-written {peaks['hand-written'] / 2**20:.1f} MiB, "
            f"kdspec {peaks['kdspec'] / 2**20:.1f} MiB, "
            f"ratio {peaks['kdspec'] / peaks['hand-written']:.3f}"
        )
    # Same initial weights, data and optimiser: the two students must end up (almost) equal.
    gap = max(
        float((a.detach() - b.detach()).abs().max())
        for a, b in zip(s_hand.parameters(), s_comp.parameters(), strict=True)
    )
    print(f"  largest weight difference between the two students after training: {gap:.2e}")


if __name__ == "__main__":
    main()
