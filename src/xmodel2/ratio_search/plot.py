"""The search's picture: objective vs SFT share, one marker per trial coloured by category mix,
with a quadratic fitted through all trials (the report's curve has one interior optimum)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xmodel2.ratio_search.share_interval import REPORT_RANGE, ShareInterval


def fit_quadratic(shares: list[float], values: list[float]) -> np.ndarray | None:
    """Coefficients (highest power first), or None with fewer than three distinct shares."""
    if len(set(shares)) < 3:
        return None
    return np.polyfit(np.asarray(shares), np.asarray(values), 2)


def plot_search(trials: list[dict], metric_label: str, out: Path, title: str,
                interval: ShareInterval | None = None) -> Path:
    """`trials`: dicts with sft_share, value, label. Writes a PNG and returns its path. With
    `interval`, the best share's confidence interval is a shaded band and the report's range is
    outlined beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from xmodel2.fileio import atomic_write_bytes

    labels = sorted({t["label"] for t in trials})
    colours = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(8.5, 4.5), dpi=120)
    for i, label in enumerate(labels):
        chosen = [t for t in trials if t["label"] == label]
        ax.scatter([100 * t["sft_share"] for t in chosen], [t["value"] for t in chosen], s=36,
                   color=colours(i % 10), label=f"mix: {label}", edgecolors="black", linewidths=0.4, zorder=3)
    shares = [t["sft_share"] for t in trials]
    values = [t["value"] for t in trials]
    coefficients = fit_quadratic(shares, values)
    if coefficients is not None:
        xs = np.linspace(min(shares), max(shares), 200)
        ax.plot(100 * xs, np.polyval(coefficients, xs), color="grey", linestyle="--", zorder=2,
                label="quadratic fit")
        if interval is not None:
            ax.axvspan(100 * interval.low, 100 * interval.high, color="tab:blue", alpha=0.15, lw=0,
                       label=f"best share {interval.estimate:.0%}, {interval.confidence:.0%} CI "
                             f"{interval.low:.0%}-{interval.high:.0%} (bootstrap)")
            ax.axvline(100 * interval.estimate, color="tab:blue", linestyle=":", linewidth=1)
            ax.axvspan(100 * REPORT_RANGE[0], 100 * REPORT_RANGE[1], facecolor="none", edgecolor="tab:green",
                       hatch="//", lw=0.8, alpha=0.5, label=f"report: {REPORT_RANGE[0]:.0%}-{REPORT_RANGE[1]:.0%}")
    best = min(trials, key=lambda t: t["value"]) if trials[0].get("minimize", True) else max(trials, key=lambda t: t["value"])
    ax.scatter([100 * best["sft_share"]], [best["value"]], s=160, facecolors="none", edgecolors="red",
               linewidths=1.5, zorder=4, label=f"best trial ({100 * best['sft_share']:.0f}%)")
    ax.set_xlabel("SFT share of the decay stage (%)")
    ax.set_ylabel(metric_label)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never over a marker
    fig.tight_layout()
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(out, buffer.getvalue())
    return out
