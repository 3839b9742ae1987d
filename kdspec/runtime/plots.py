"""Plots of runs (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

__all__ = ["plot_compare", "plot_curves"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    from kdspec.runtime.files import atomic_write

    atomic_write(path, lambda p: fig.savefig(p, dpi=110, format=path.suffix.lstrip(".") or "png"))


def plot_curves(records: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Loss terms (left) and val/test top-1 of every evaluated role (right) against epochs."""
    plt = _pyplot()
    path = Path(path)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    try:
        epochs = [r["epoch"] for r in records]
        ax_loss.plot(epochs, [r["loss"] for r in records], label="total", linewidth=2)
        terms = sorted({k for r in records for k in r["terms"]})
        if len(terms) > 1:
            for t in terms:
                ax_loss.plot(epochs, [r["terms"].get(t, float("nan")) for r in records], label=t)
        ax_loss.set_xlabel("epoch")
        ax_loss.set_ylabel("mean training loss")
        ax_loss.set_yscale("symlog", linthresh=1e-3)
        ax_loss.legend(fontsize="small")
        for split, style in (("val", "--"), ("test", "-")):
            roles = sorted({k for r in records for k in r.get(split, {})})
            for role in roles:
                ys = [r.get(split, {}).get(role, {}).get("top1", float("nan")) for r in records]
                ax_acc.plot(epochs, ys, style, label=f"{role} {split}")
        ax_acc.set_xlabel("epoch")
        ax_acc.set_ylabel("top-1 (%)")
        if ax_acc.lines:
            ax_acc.legend(fontsize="small")
        stages = [(r["epoch"], r["stage"]) for r in records]
        for (e0, s0), (_, s1) in itertools.pairwise(stages):
            if s0 != s1:
                for ax in (ax_loss, ax_acc):
                    ax.axvline(e0, color="grey", linewidth=0.8, linestyle=":")
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        _save(fig, path)
    finally:
        plt.close(fig)
    return path


def plot_compare(
    rows: list[dict[str, Any]],
    path: str | Path,
    title: str = "",
    ylabel: str = "test top-1 (%)",
) -> Path:
    """Bar chart of the mean test metric per method with ±std error bars.

    Args:
        rows: ``{"method": str, "mean": float, "std": float}`` per method.
        path: Where to write the PNG.
        title: Figure title.
        ylabel: The metric's label (a label ending in ``(%)`` keeps the axis within 0-100).
    """
    plt = _pyplot()
    path = Path(path)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(rows) + 2), 4))
    try:
        names = [r["method"] for r in rows]
        means = [r["mean"] for r in rows]
        stds = [r["std"] for r in rows]
        ax.bar(names, means, yerr=stds, capsize=4, color="tab:blue", alpha=0.8)
        low = min((m - s for m, s in zip(means, stds, strict=True)), default=0.0)
        high = max((m + s for m, s in zip(means, stds, strict=True)), default=100.0)
        percent = ylabel.endswith("(%)")
        pad = max(1.0 if percent else 0.05 * abs(high) + 1e-6, 0.15 * (high - low))
        bottom, top = low - pad, high + pad
        if percent:
            bottom, top = max(0.0, bottom), min(100.0, top)
        ax.set_ylim(bottom, top)
        ax.set_ylabel(ylabel)
        for i, (m, s) in enumerate(zip(means, stds, strict=True)):
            ax.text(i, m + s, f"{m:.4g}", ha="center", va="bottom", fontsize="small")
        if title:
            ax.set_title(title)
        fig.tight_layout()
        _save(fig, path)
    finally:
        plt.close(fig)
    return path
