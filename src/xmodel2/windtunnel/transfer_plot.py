"""The LR-transfer plot: mean held-out loss vs LR per width for μP and SP (bands: the spread of
the seeds), and a third panel with each width's optimum, its error bar and the fitted drift."""

from __future__ import annotations

import io
import math
from pathlib import Path

from xmodel2.fileio import atomic_write_bytes
from xmodel2.windtunnel.intervals import Interval
from xmodel2.windtunnel.lr_transfer import ARMS

ARM_COLORS = {"mup": "tab:blue", "sp": "tab:red"}


def plot_lr_transfer(result: dict, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths = sorted({r["width"] for r in result["runs"]})
    colors = plt.cm.viridis([i / max(1, len(widths) - 1) * 0.85 for i in range(len(widths))])
    finite = [r["val_loss"] for r in result["runs"] if r["val_loss"] is not None]
    # Far-off losses (very low or very high LRs) would squash the interesting part of the curves.
    low = min(finite) if finite else 0.0
    top = min(max(finite), low + 1.5) if finite else 1.0
    margin = 0.05 * (top - low or 1.0)
    fig, axes = plt.subplots(1, len(ARMS) + 1, figsize=(17, 4.8))
    for ax, (arm, name) in zip(axes, ARMS.items()):
        for width, color in zip(widths, colors):
            _draw_curve(ax, result, arm, width, color, top + margin)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("log2 peak LR (error bar: optimum's CI; x: diverged)")
        ax.set_ylim(low - margin, top + 2 * margin)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("held-out loss (nats/token), mean over seeds")
    axes[1].sharey(axes[0])
    _draw_drift(axes[-1], result, widths)
    level = f"{result['confidence']:.0%}"
    fig.suptitle(f"LR transfer over {len(result['seeds'])} seed(s), {level} intervals: "
                 f"{result['verdict'].upper()}", fontsize=11)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _draw_curve(ax, result: dict, arm: str, width: int, color, ceiling: float) -> None:
    """Mean loss over seeds at each LR, with a band from the best to the worst seed."""
    by_lr: dict[float, list[float | None]] = {}
    for r in result["runs"]:
        if r["arm"] == arm and r["width"] == width:
            by_lr.setdefault(r["log2_lr"], []).append(r["val_loss"])
    xs = sorted(x for x, losses in by_lr.items() if all(v is not None for v in losses))
    means = [min(sum(by_lr[x]) / len(by_lr[x]), ceiling) for x in xs]
    ax.plot(xs, means, "o-", color=color, label=f"width {width}", ms=3)
    if len(result["seeds"]) > 1:
        ax.fill_between(xs, [min(min(by_lr[x]), ceiling) for x in xs], [min(max(by_lr[x]), ceiling) for x in xs],
                        color=color, alpha=0.18, lw=0)
    bad = [x for x, losses in by_lr.items() if any(v is None for v in losses)]
    ax.plot(bad, [ceiling] * len(bad), "x", color=color, ms=8)
    interval = result["optima"][arm][str(width)]["interval"]
    if interval is not None:
        found = Interval.from_dict(interval)
        y = min(means) if means else ceiling
        error = None if not math.isfinite(found.low) else [[found.mean - found.low], [found.high - found.mean]]
        ax.errorbar([found.mean], [y], xerr=error, fmt="v", color=color, ms=7, capsize=4)


def _draw_drift(ax, result: dict, widths: list[int]) -> None:
    """Optimum vs log2 width per arm: error bars per width and the drift line with its CI band."""
    log_widths = [math.log2(w) for w in widths]
    centre = sum(log_widths) / len(log_widths)
    for arm, name in ARMS.items():
        color = ARM_COLORS[arm]
        points = [(math.log2(int(w)), Interval.from_dict(o["interval"]))
                  for w, o in result["optima"][arm].items() if o["interval"] is not None]
        if not points:
            continue
        xs = [x for x, _ in points]
        means = [i.mean for _, i in points]
        errors = [[i.mean - i.low for _, i in points], [i.high - i.mean for _, i in points]]
        finite = all(math.isfinite(i.low) for _, i in points)
        ax.errorbar(xs, means, yerr=errors if finite else None, fmt="o", color=color, capsize=4, label=name)
        drift = result["drift"][arm]
        if drift is None:
            continue
        slope = Interval.from_dict(drift)
        level = sum(means) / len(means)  # the least-squares line passes through the centroid
        grid = [min(log_widths), max(log_widths)]
        ax.plot(grid, [level + slope.mean * (x - centre) for x in grid], color=color, lw=1.2,
                label=f"{arm} drift {slope.text()} oct/doubling")
        if math.isfinite(slope.low):
            lines = [[level + s * (x - centre) for x in grid] for s in (slope.low, slope.high)]
            ax.fill_between(grid, [min(a, b) for a, b in zip(*lines)], [max(a, b) for a, b in zip(*lines)],
                            color=color, alpha=0.15, lw=0)
    ax.set_xticks(log_widths, [str(w) for w in widths])
    ax.set_xlabel("width (log2 axis)")
    ax.set_ylabel("optimal log2 LR")
    ax.set_title("optimum vs width (bars: CI per width; band: drift CI)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
