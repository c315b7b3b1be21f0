"""The LR-transfer plot: held-out loss vs LR, one line per width, μP and SP side by side."""

from __future__ import annotations

from pathlib import Path

from xmodel2.fileio import atomic_write_bytes
from xmodel2.windtunnel.lr_transfer import ARMS


def plot_lr_transfer(result: dict, path: str | Path) -> Path:
    import io

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
    fig, axes = plt.subplots(1, len(ARMS), figsize=(6 * len(ARMS), 4.6), sharey=True)
    for ax, (arm, name) in zip(axes, ARMS.items()):
        for width, color in zip(widths, colors):
            runs = sorted((r for r in result["runs"] if r["arm"] == arm and r["width"] == width),
                          key=lambda r: r["log2_lr"])
            ok = [r for r in runs if r["val_loss"] is not None]
            ax.plot([r["log2_lr"] for r in ok], [min(r["val_loss"], top + margin) for r in ok],
                    "o-", color=color, label=f"width {width}", ms=4)
            bad = [r["log2_lr"] for r in runs if r["val_loss"] is None]
            ax.plot(bad, [top + margin] * len(bad), "x", color=color, ms=8)
            optimum = result["optima"][arm].get(str(width))
            if optimum is not None:
                ax.axvline(optimum["log2_lr"], color=color, ls="--", lw=1)
        spread = result["spread_octaves"][arm]
        suffix = f", optimum spread {spread:.2f} octaves" if spread is not None else ""
        ax.set_title(f"{name}{suffix}", fontsize=10)
        ax.set_xlabel("log2 peak learning rate (dashed: fitted optimum, x: diverged)")
        ax.set_ylim(low - margin, top + 2 * margin)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("held-out loss (nats/token)")
    fig.suptitle(f"LR transfer: {result['verdict'].upper()}", fontsize=11)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path

