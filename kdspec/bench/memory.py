"""Benchmark: peak memory of a compiled step / the hand-written step, side by side.

The steps are those of :mod:`kdspec.bench.methods` (same models, data, optimiser; first-step
losses checked to 1e-5). Each step runs once under ``torch.profiler`` with memory profiling;
the peak of the live bytes its allocations and frees add up to (CPU allocator events, in time
order) is the step's peak, from the bytes alive when it starts (weights, optimiser state, the
other variant's buffers all excluded). The variants alternate over rounds; the median ratio is
printed with the machine and the versions.

Run: `kdspec bench memory [--rounds 3] [--methods hinton,at,...]`.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from kdspec.bench.methods import arguments, machine, setup

METHODS = ("hinton", "at", "fitnets_hint", "fitnets_kd", "rkd", "crd", "dml")


def peak_bytes(step: Callable[[], torch.Tensor]) -> int:
    """Peak of the bytes a step allocates beyond what was alive when it started."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]"
    ]
    live = peak = 0
    for _, nbytes in sorted(events):
        live += nbytes
        peak = max(peak, live)
    return peak


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__.split("\n")[0], rounds=3, methods=METHODS).parse_args(argv)
    print(f"machine: {machine()}")
    print(
        f"{args.teacher} -> {args.student}, batch {args.batch}, {args.rounds} interleaved "
        "rounds; ratio = peak bytes of a compiled step / of the hand-written step"
    )
    print(f"{'method':<14}{'median':>8}{'min':>8}{'max':>8}{'hand MiB':>10}")
    for method in args.methods.split(","):
        compiled, hand, _ = setup(
            method, args.teacher, args.student, args.batch, args.num_samples, args.nce_k
        )
        torch.manual_seed(1)  # CRD draws its negatives: the same for both
        lc = float(compiled())  # warm: optimiser state exists before the measured steps
        torch.manual_seed(1)
        lh = float(hand())
        if abs(lc - lh) > 1e-5 * max(1.0, abs(lh)):
            raise SystemExit(f"{method}: first-step losses differ: compiled {lc!r}, hand {lh!r}")
        ratios, hand_peaks = [], []
        for r in range(args.rounds):
            pair = [("c", compiled), ("h", hand)]
            peaks = {name: peak_bytes(step) for name, step in (pair if r % 2 else pair[::-1])}
            ratios.append(peaks["c"] / peaks["h"])
            hand_peaks.append(peaks["h"])
        print(
            f"{method:<14}{statistics.median(ratios):8.3f}{min(ratios):8.3f}{max(ratios):8.3f}"
            f"{statistics.median(hand_peaks) / 2**20:10.1f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
