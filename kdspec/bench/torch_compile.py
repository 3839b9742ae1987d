"""Benchmark: a step with the roles under torch.compile / the same step eager.

Two copies of one compiled method (same weights): one with ``[train] compile``'s
``compile_roles`` (each role's forward through torch.compile, inductor by default), one
eager. Prints the graphs compiled (one per network means no graph break in the tap reads), the
first compiled step's time / an eager step (compilation), whether later steps recompiled, and
the median ratio of step times over interleaved rounds, with the machine and the versions.

Run: `kdspec bench compile [--methods hinton,at] [--teacher resnet20]
[--student resnet8] [--batch 32] [--rounds 5] [--steps 3] [--backend inductor]`.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from typing import Any

import torch

from kdspec.api import load_method
from kdspec.bench.methods import SPECS, _spec, machine
from kdspec.compiler import compile_spec
from kdspec.runtime.accel import compile_roles
from kdspec.zoo import build_model


def _setup(method: str, args: argparse.Namespace) -> Any:
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 100, (args.batch,))
    name, stage = _spec(method)
    kinds = ("p1", "p2") if method == "dml" else ("t", "s")
    archs = (args.student, args.student) if method == "dml" else (args.teacher, args.student)
    models = {r: build_model(a, 100, 3) for r, a in zip(kinds, archs, strict=True)}
    d = compile_spec(load_method(SPECS / f"{name}.kd"), models, (x, y))
    d.set_stage(stage or d.method.effective_stages()[0].name)
    return d.train(), (x, y)


def _stepper(d: Any, batch: Any) -> Any:
    opt = torch.optim.SGD(d.trainable_parameters(), lr=0.01, momentum=0.9)

    def step() -> float:
        out = d(batch)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        return float(out.loss.detach())

    return step


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", default="hinton,at")
    ap.add_argument("--teacher", default="resnet20")
    ap.add_argument("--student", default="resnet8")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--backend", default="inductor")
    args = ap.parse_args(argv)
    print(f"machine: {machine()}")
    print(
        f"{args.teacher} -> {args.student}, batch {args.batch}, backend {args.backend}, "
        f"{args.rounds} interleaved rounds of {args.steps} steps; ratio = compiled / eager step"
    )
    print(f"{'method':<14}{'graphs':>7}{'roles':>6}{'first':>8}{'recomp':>7}"
          f"{'median':>8}{'min':>7}{'max':>7}")  # fmt: skip
    from torch._inductor.compile_fx import compile_fx

    for method in args.methods.split(","):
        eager_d, batch = _setup(method, args)
        comp_d = copy.deepcopy(eager_d)
        graphs: list[int] = []

        def backend(gm: torch.fx.GraphModule, inputs: Any, g: list[int] = graphs) -> Any:
            g.append(len(gm.graph.nodes))
            return gm.forward if args.backend == "eager" else compile_fx(gm, inputs)

        compile_roles(comp_d, backend=backend)
        eager, compiled = _stepper(eager_d, batch), _stepper(comp_d, batch)
        t0 = time.perf_counter()
        le = eager()
        t_eager = time.perf_counter() - t0
        t0 = time.perf_counter()
        lc = compiled()
        first = (time.perf_counter() - t0) / t_eager
        if abs(lc - le) > 1e-4 * max(1.0, abs(le)):
            print(f"{method}: first-step losses differ: compiled {lc!r}, eager {le!r}")
        after_first = len(graphs)
        ratios = []
        for r in range(args.rounds):
            times = {}
            pair = (("c", compiled), ("e", eager))
            for label, step in pair if r % 2 else pair[::-1]:
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    step()
                times[label] = time.perf_counter() - t0
            ratios.append(times["c"] / times["e"])
        recompiled = len(graphs) - after_first
        print(
            f"{method:<14}{after_first:7d}{len(comp_d.roles):6d}{first:8.1f}{recompiled:7d}"
            f"{statistics.median(ratios):8.3f}{min(ratios):7.3f}{max(ratios):7.3f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
