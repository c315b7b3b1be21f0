"""Log-log plots of a coordinate-check result: one figure per arm, one panel per step.

Top row: mean |x_t| against width (or depth); bottom row: mean |x_t - x_0|. One line per tracked
module: colour by module kind, line style by block. Flat lines are what μP promises.
"""

from __future__ import annotations

import io
from pathlib import Path

from xmodel2.fileio import atomic_write_bytes

KIND_COLOURS = {
    "embedding": "#000000", "q": "#1f77b4", "k": "#17becf", "v": "#2ca02c",
    "attn_out": "#ff7f0e", "mlp_out": "#d62728", "resid": "#9467bd",
    "final_norm": "#8c564b", "logits": "#e377c2",
}
BLOCK_STYLES = ("-", "--", ":", "-.")
ROW_TITLES = {"act": "mean |x_t|", "update": "mean |x_t − x_0|"}


def plot_arm(result: dict, arm_name: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    arm = result["arms"][arm_name]
    values = result["values"]
    steps = result["settings"]["steps"]
    blocks = sorted({m.split(".")[0] for m in result["modules"] if "." in m})
    fig, axes = plt.subplots(2, steps + 1, figsize=(2.9 * (steps + 1) + 1.8, 6.4),
                             sharex=True, squeeze=False)
    for row, statistic in enumerate(("act", "update")):
        for step in range(steps + 1):
            ax = axes[row][step]
            if statistic == "update" and step == 0:
                ax.axis("off")
                ax.text(0.5, 0.5, "step 0: x_0 itself,\nno update yet", ha="center",
                        va="center", transform=ax.transAxes, color="0.4")
                continue
            for module in result["modules"]:
                entry = arm["modules"][module][statistic][step]
                points = [(v, y) for v, y in zip(values, entry["mean"]) if y and y > 0]
                if not points:
                    continue
                kind = module.split(".")[-1]
                block = module.split(".")[0] if "." in module else None
                style = BLOCK_STYLES[blocks.index(block) % len(BLOCK_STYLES)] if block else "-"
                failed = entry["checked"] and not entry["passed"]
                ax.plot(*zip(*points), style, color=KIND_COLOURS[kind], marker="o",
                        markersize=3, linewidth=2.2 if failed else 1.2, label=module)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(values)
            ax.set_xticklabels([str(v) for v in values], fontsize=7)
            ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(ticker.NullFormatter())
            ax.tick_params(axis="y", labelsize=7)
            ax.grid(True, which="major", alpha=0.3)
            ax.set_title(f"step {step}", fontsize=9)
            if step == (1 if statistic == "update" else 0):
                ax.set_ylabel(ROW_TITLES[statistic], fontsize=9)
            if row == 1:
                ax.set_xlabel(result["axis"], fontsize=8)
        _share_y_range(axes[row][1 if statistic == "update" else 0:])
    handles, labels = axes[0][0].get_legend_handles_labels()
    legend_width = 1.3  # inches kept free on the right for the legend
    fig.legend(handles, labels, loc="center right", fontsize=7, frameon=False)
    status = "PASS" if arm["passed"] else f"FAIL ({len(arm['failures'])} checks; thick lines)"
    fig.suptitle(f"coordinate check, {arm_name}: {arm['description']} — {status}", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1 - legend_width / fig.get_figwidth(), 0.95))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def _share_y_range(axes: list) -> None:
    """One y range per row, at least two decades, so a flat line looks flat and slopes compare."""
    lows, highs = zip(*(ax.get_ylim() for ax in axes))
    low, high = min(lows), max(highs)
    centre = (low * high) ** 0.5
    low, high = min(low, centre / 10), max(high, centre * 10)
    for ax in axes:
        ax.set_ylim(low, high)
