"""Compare methods over seeds against the student trained alone.

Every (method, seed) pair is a *cell*: one training run whose result is stored in
``DIR/cells/<method>-seed<k>.json`` as soon as it finishes, so an interrupted comparison picks up
where it stopped (a half-trained cell resumes from its checkpoint). Each seed fixes the
student's initial weights and the data order for every method and for the baseline, and the
teacher comes from the cache (its seed does not change with the run seed), so the differences
to the baseline are paired by seed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdspec.ir import Lowered
from kdspec.runtime.files import atomic_write
from kdspec.runtime.job import (
    JobOptions,
    Prepared,
    baseline_role,
    distill,
    prepare,
    train_baseline,
)
from kdspec.runtime.metrics import METRICS
from kdspec.runtime.plots import plot_compare
from kdspec.runtime.runfile import Run
from kdspec.runtime.stats import mean_std, paired_difference, t_quantile

__all__ = ["BASELINE", "CompareResult", "compare"]

BASELINE = "baseline"


@dataclass
class CompareResult:
    """Results of a comparison: one row per method (baseline first) and every cell."""

    rows: list[dict[str, Any]]
    cells: list[dict[str, Any]]
    out_dir: Path
    markdown: str


def _cell_key(kind: str, lowered: Lowered | None, run: Run, role: str = "") -> str:
    spec = lowered.method.model_dump(mode="json") if lowered is not None else None
    text = json.dumps([kind, spec, run.config.model_dump(mode="json"), role], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    atomic_write(path, lambda p: p.write_text(text))


def _cell(
    name: str,
    seed: int,
    key: str,
    out: Path,
    compute: Callable[[Path], Any],
    log: Callable[[str], None],
) -> dict[str, Any]:
    path = out / "cells" / f"{name}-seed{seed}.json"
    run_dir = out / "runs" / f"{name}-seed{seed}"
    if path.exists():
        try:
            cell = json.loads(path.read_text())
        except ValueError:
            cell = None
        if cell is not None and cell.get("key") == key and "value" in cell:
            log(f"{name} seed {seed}: done earlier ({cell['value']:.4g}), not recomputed")
            return cell
        log(f"{name} seed {seed}: stored cell has other settings; recomputing")
        shutil.rmtree(run_dir, ignore_errors=True)
    started = time.perf_counter()
    result = compute(run_dir)
    summary = result.summary
    role = next(iter(summary["reported_test_top1"]))
    cell = {
        "method": name,
        "seed": seed,
        "key": key,
        "role": role,
        "source": summary.get("models", {}).get(role),
        "teachers": summary.get("teachers", {}),
        "test_top1": summary["reported_test_top1"][role],
        "metric": summary["metric"]["name"],
        "value": summary["reported_test"][role],
        "final": summary["final"][role],
        "best_val": summary["best_val"][role],
        "eval_protocol": summary["eval_protocol"],
        "run_dir": str(run_dir),
        "wall_time_s": round(time.perf_counter() - started, 2),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_json(path, cell)
    return cell


def compare(
    methods: Sequence[Lowered],
    run: Run,
    seeds: Sequence[int],
    out_dir: str | Path,
    opts: JobOptions | None = None,
    command: str = "",
) -> CompareResult:
    """Train every method and the student alone for every seed; summarise and plot.

    Writes ``results.json``, ``results.md`` and ``compare.png`` to ``out_dir``.
    """
    opts = opts or JobOptions()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = _unique_names([m.method.name for m in methods])
    cells: list[dict[str, Any]] = []
    total = len(seeds) * (1 + len(methods))

    def label(name: str, seed: int) -> str:
        """Which cell a progress line belongs to: method, seed, k/N."""
        return f"{name} seed {seed} ({len(cells) + 1}/{total})"

    for seed in seeds:
        seeded = run.with_updates(train={"seed": seed})
        preps: dict[str, Prepared] = {}

        def prep_for(i: int, seeded: Run = seeded, preps: dict[str, Prepared] = preps) -> Prepared:
            if names[i] not in preps:
                preps[names[i]] = prepare(methods[i], seeded, opts)
            return preps[names[i]]

        role = baseline_role(methods[0].method)
        key = _cell_key(BASELINE, None, seeded, role.name if role else "")
        base_label = label(BASELINE, seed)
        base = _cell(
            BASELINE,
            seed,
            key,
            out,
            lambda d, lab=base_label: train_baseline(  # type: ignore[misc]
                prep_for(0), d, resume=True, opts=opts, label=lab
            ),
            opts.log,
        )
        cells.append(base)
        for i, low in enumerate(methods):
            key = _cell_key("distill", low, seeded)

            cell_label = label(names[i], seed)

            def fit(d: Path, i: int = i, lab: str = cell_label) -> Any:
                return distill(prep_for(i), d, resume=True, opts=opts, label=lab)

            cell = _cell(names[i], seed, key, out, fit, opts.log)
            cells.append(cell)
    teachers: dict[str, Any] = {}
    for c in cells:
        teachers.update(c.get("teachers", {}))
    baseline_source = next((c.get("source") for c in cells if c["method"] == BASELINE), None)
    if cells and (baseline_source is None or not teachers):  # cells from an older kdspec
        prep = prepare(methods[0], run, opts)
        teachers = teachers or prep.teachers
        role = baseline_role(methods[0].method)
        baseline_source = prep.sources.get(role.name) if role else None
    rows = _rows([BASELINE, *names], cells, seeds)
    protocol = cells[0]["eval_protocol"]["description"] if cells else ""
    metric = METRICS[run.config.train.metric]
    results = {
        "seeds": list(seeds),
        "metric": {"name": metric.name, "label": metric.label},
        "eval_protocol": protocol,
        "confidence": "95% t-interval of the per-seed difference to the baseline (paired by seed)",
        "baseline": {"source": baseline_source},
        "teachers": teachers,
        "data": run.config.data.model_dump(mode="json"),
        "train": run.config.train.model_dump(mode="json"),
        "rows": rows,
        "cells": cells,
        "command": command,
    }
    results["warnings"] = warnings = small_sample_warnings(rows, len(seeds))
    for line in warnings:
        opts.log(f"warning: {line}")
    _write_json(out / "results.json", results)
    markdown = _markdown(rows, run, seeds, protocol, baseline_source, teachers, command)
    (out / "results.md").write_text(markdown)
    plot_compare(
        [{"method": r["method"], "mean": r["mean"], "std": r["std"]} for r in rows],
        out / "compare.png",
        title=f"{run.config.data.source}: test {metric.label} over {len(seeds)} seed(s)",
        ylabel=f"test {metric.label}",
    )
    return CompareResult(rows, cells, out, markdown)


def _unique_names(names: list[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        candidate, k = name, 2
        while candidate in out or candidate == BASELINE:
            candidate = f"{name}_{k}"
            k += 1
        out.append(candidate)
    return out


def _rows(
    names: list[str], cells: list[dict[str, Any]], seeds: Sequence[int]
) -> list[dict[str, Any]]:
    by = {(c["method"], c["seed"]): c["value"] for c in cells}
    base = [by[(BASELINE, s)] for s in seeds]
    rows = []
    for name in names:
        xs = [by[(name, s)] for s in seeds]
        m, sd = mean_std(xs)
        row: dict[str, Any] = {"method": name, "n": len(xs), "mean": m, "std": sd, "per_seed": xs}
        if name != BASELINE:
            row["vs_baseline"] = paired_difference(xs, base)
        rows.append(row)
    return rows


# Fewer seeds than this: the interval is reported with a warning that it says little.
FEW_SEEDS = 5


def small_sample_warnings(rows: list[dict[str, Any]], n: int) -> list[str]:
    """What the reader of a comparison over ``n`` seeds must know before trusting it."""
    out = []
    if n == 1:
        out.append(
            "1 seed: no confidence interval or p value can be computed; "
            f"run `--seeds {FEW_SEEDS}` or more"
        )
    elif n < FEW_SEEDS:
        t = t_quantile(0.975, n - 1)
        out.append(
            f"only {n} seeds: the 95% interval uses t({n - 1}) = {t:.2f}, so it is wide and "
            f"the p value rests on {n} paired differences; run `--seeds {FEW_SEEDS}` or more "
            "before drawing conclusions"
        )
    for r in rows:
        d = r.get("vs_baseline")
        if d and d["n"] >= 2 and d["low"] is None:
            out.append(
                f"`{r['method']}`: every seed gives the same difference to the baseline "
                f"({d['mean']:+.2f}): no spread, so no interval or p value (more seeds, or a "
                "larger test set, separate the runs)"
            )
    return out


def _signed(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.2f}"


def _markdown(
    rows: list[dict[str, Any]],
    run: Run,
    seeds: Sequence[int],
    protocol: str,
    baseline_source: str | None,
    teachers: dict[str, Any],
    command: str,
) -> str:
    cfg = run.config
    label = METRICS[cfg.train.metric].label
    data = cfg.data.source + (
        f" (transfer set without classes {cfg.data.exclude_classes})"
        if cfg.data.exclude_classes
        else ""
    )
    lines = [
        f"# Comparison on {data}",
        "",
        f"- seeds: {', '.join(map(str, seeds))}; {cfg.train.epochs} epochs, "
        f"{cfg.train.optimizer} lr {cfg.train.lr} ({cfg.train.schedule} schedule), "
        f"batch {cfg.data.batch_size}",
        f"- eval protocol: {protocol}",
        f"- baseline: the student trained alone ({baseline_source}), same initial weights, data "
        "order and budget per seed",
    ]
    for role, info in teachers.items():
        where = info.get("weights") or info.get("cache") or "trained weights from its source"
        top1 = info.get("test_top1")
        lines.append(
            f"- teacher `{role}`: {info['source']}"
            + (f", test top-1 {top1:.2f}%" if top1 is not None else "")
            + f" ({where})"
        )
    if command:
        lines.append(f"- command: `{command}`")
    lines += [
        "",
        f"| method | n | test {label} mean ± std | Δ vs baseline (95% CI, paired t) | p |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if r["method"] == BASELINE:
            delta, p = "—", "—"
        else:
            d = r["vs_baseline"]
            if d["low"] is not None:
                ci = f" [{_signed(d['low'])}, {_signed(d['high'])}]"
            else:
                ci = " (no interval: one seed)" if d["n"] < 2 else " (no interval: no spread)"
            delta = f"{_signed(d['mean'])}{ci}"
            p = f"{d['p']:.3g}" if d["p"] is not None else "n/a"
        lines.append(
            f"| {r['method']} | {r['n']} | {r['mean']:.2f} ± {r['std']:.2f} | {delta} | {p} |"
        )
    warnings = small_sample_warnings(rows, len(seeds))
    if warnings:
        lines += ["", *(f"> warning: {w}" for w in warnings)]
    lines += ["", f"Per seed (test {label}):", ""]
    lines.append("| method | " + " | ".join(f"seed {s}" for s in seeds) + " |")
    lines.append("|---|" + "---|" * len(seeds))
    for r in rows:
        lines.append(f"| {r['method']} | " + " | ".join(f"{x:.4g}" for x in r["per_seed"]) + " |")
    return "\n".join(lines) + "\n"
