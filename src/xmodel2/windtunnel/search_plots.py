"""Plots of a μP search: the optimisation history, and the good region (the report's Figure 6).

Both read the rows of `search.trial_rows` (plain dicts), so they work on a stored study too.
"""

from __future__ import annotations

import io
import math
from itertools import combinations
from pathlib import Path

from xmodel2.fileio import atomic_write_bytes
from xmodel2.windtunnel.search import PARAMS

LOG_AXES = {"lr": 10, "dim_model_base": 2}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    _pyplot().close(fig)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def plot_history(rows: list[dict], path: str | Path, title: str) -> Path:
    """Each trial's final loss (pruned: its last reported loss), and the best so far."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    done = [r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None]
    diverged = [r["number"] for r in rows if r["state"] == "COMPLETE" and r["value"] is None]
    pruned = [r for r in rows if r["state"] == "PRUNED" and r["intermediate"]]
    ax.plot([r["number"] for r in done], [r["value"] for r in done], "o", color="tab:blue",
            ms=4, label="completed")
    ax.plot([r["number"] for r in pruned], [r["intermediate"][-1][1] for r in pruned], "x",
            color="0.55", ms=5, label="pruned (last reported loss)")
    best, xs, ys = math.inf, [], []
    for r in sorted(done, key=lambda r: r["number"]):
        best = min(best, r["value"])
        xs.append(r["number"])
        ys.append(best)
    ax.step(xs, ys, where="post", color="tab:red", label="best so far")
    if done:
        # A few awful trials would flatten the rest: the axis stops at the 90th percentile
        # (when the worst is far beyond it) and trials above it sit on the top edge.
        values = sorted(r["value"] for r in done)
        best, q90 = values[0], values[int(0.9 * (len(values) - 1))]
        top = values[-1] if values[-1] - best <= 2 * (q90 - best) else q90
        span = top - best or 1.0
        ax.set_ylim(best - 0.05 * span, top + 0.1 * span)
        off = [r["number"] for r in done if r["value"] > top + 0.1 * span]
        if off:
            ax.plot(off, [top + 0.1 * span] * len(off), "^", color="tab:blue", ms=6, clip_on=False,
                    label="completed, off the scale")
    if diverged:
        ax.plot(diverged, [ax.get_ylim()[1]] * len(diverged), "v", color="tab:red", ms=6,
                label="diverged", clip_on=False)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel("held-out loss (nats/token)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_good_region(rows: list[dict], threshold: float, path: str | Path, title: str) -> Path:
    """Every pair of parameters: completed trials in grey, those under `threshold` coloured by loss."""
    plt = _pyplot()
    done = [r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None]
    good = sorted((r for r in done if r["value"] <= threshold), key=lambda r: -r["value"])
    n = len(PARAMS) - 1
    fig, axes = plt.subplots(n, n, figsize=(3.1 * n, 3.0 * n), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    from matplotlib.colors import Normalize

    scatter = None
    values = [r["value"] for r in good]
    # one norm for every panel, never singular (one good trial would give vmin == vmax)
    best = min(values, default=threshold)
    norm = Normalize(vmin=best, vmax=max(threshold, best + 1e-3))
    for x_name, y_name in combinations(PARAMS, 2):
        ax = axes[PARAMS.index(y_name) - 1][PARAMS.index(x_name)]
        ax.set_visible(True)
        ax.scatter([r["params"][x_name] for r in done], [r["params"][y_name] for r in done],
                   s=8, color="0.8", label="all completed")
        scatter = ax.scatter([r["params"][x_name] for r in good], [r["params"][y_name] for r in good],
                             s=18, c=values, cmap="viridis_r", norm=norm)
        for name, axis in ((x_name, "x"), (y_name, "y")):
            if name in LOG_AXES:
                getattr(ax, f"set_{axis}scale")("log", base=LOG_AXES[name])
        if ax in axes[-1]:
            ax.set_xlabel(x_name)
        if ax is axes[PARAMS.index(y_name) - 1][0]:
            ax.set_ylabel(y_name)
        ax.grid(alpha=0.3)
    if scatter is not None and good:
        fig.colorbar(scatter, ax=axes[0][n - 1], fraction=0.5, label="held-out loss (good trials)")
    fig.suptitle(f"{title}\n{len(good)} of {len(done)} completed trials with loss <= {threshold:.4f} "
                 "(coloured); grey: the rest", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
