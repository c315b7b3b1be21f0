"""Each stage's data mixture as a pie, side by side, in the manner of the Xmodel-2 report's
Figure 2; a source keeps its colour in every stage so the shift between stages reads at a glance."""

from __future__ import annotations

from pathlib import Path

from xmodel2.fileio import save_figure
from xmodel2.planning.report import short_count

# Slices below this share carry no label on the pie (they would overlap); the legend lists all.
LABEL_SHARE = 0.04


def draw_mixtures(stages: list[tuple[str, int, dict[str, int]]], path: str | Path, title: str = "") -> Path:
    """`stages`: (name, tokens, {source: tokens}) per stage. Written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources = sorted({source for _, _, mixture in stages for source in mixture})
    palette = plt.get_cmap("tab20" if len(sources) > 10 else "tab10")
    colours = {source: palette(i % palette.N) for i, source in enumerate(sources)}
    legend_rows = max((len(mixture) + 1) // 2 for _, _, mixture in stages)
    fig, axes = plt.subplots(2, len(stages), figsize=(5.4 * len(stages), 5.6 + 0.26 * legend_rows), dpi=120,
                             squeeze=False, gridspec_kw={"height_ratios": [5, 0.3 * legend_rows]})
    for pie, key, (name, tokens, mixture) in zip(axes[0], axes[1], stages):
        names = sorted(mixture, key=lambda s: -mixture[s])
        total = sum(mixture.values())
        shares = [mixture[s] / total for s in names]
        pie.pie(shares, colors=[colours[s] for s in names], startangle=90, counterclock=False,
                labels=[_percent(share) if share >= LABEL_SHARE else "" for share in shares],
                labeldistance=0.72, textprops={"fontsize": 10},
                wedgeprops={"linewidth": 1, "edgecolor": "white"})
        pie.set_title(f"{name}: {short_count(tokens, ',.3g')} tokens", fontsize=12)
        pie.set_aspect("equal")
        key.axis("off")
        key.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=colours[s]) for s in names],
                   labels=[f"{s}  {mixture[s] / total:.1%}" for s in names],
                   loc="upper center", ncol=2, fontsize=9, frameon=False)
    if title:
        fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    return save_figure(fig, path)



def _percent(share: float) -> str:
    return f"{share:.0%}" if share >= 0.095 else f"{share:.1%}"
