"""The loss-curve plot: training and validation loss, learning rate on a second axis, and a panel
of in-loop task accuracies when the run scored any (`train.eval_tasks`)."""

from __future__ import annotations

from pathlib import Path

from xmodel2.train.metrics import read_metrics


def plot_loss_curve(metrics_path: str | Path, out_png: str | Path, title: str = "",
                    stage_starts: dict[str, int] | None = None) -> Path:
    """Plot metrics.jsonl; `stage_starts` maps stage name -> training tokens at its first step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [(r["tokens"], r["loss"]) for r in records if "loss" in r]
    val = [(r["tokens"], r["val_loss"]) for r in records if "val_loss" in r]
    lr = [(r["tokens"], r["lr"]) for r in records if "lr" in r]
    tasks = sorted({key for r in records for key in r if key.startswith("eval/")})

    if tasks:
        fig, (ax, task_axis) = plt.subplots(2, 1, figsize=(8, 7), dpi=120, sharex=True,
                                            gridspec_kw={"height_ratios": [3, 2]})
        _plot_accuracies(task_axis, records, tasks)
    else:
        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    if train:
        ax.plot(*zip(*train), color="tab:blue", lw=1.2, label="train loss")
    if val:
        ax.plot(*zip(*val), color="tab:orange", marker="o", ms=4, lw=1.5, label="validation loss")
    if not tasks:
        ax.set_xlabel("training tokens")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    lr_axis = ax.twinx()
    if lr:
        lr_axis.plot(*zip(*lr), color="tab:green", lw=1.0, ls="--", label="learning rate")
    lr_axis.set_ylabel("learning rate (base group)")
    lr_axis.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    bottom = ax.get_ylim()[0]
    for name, start in (stage_starts or {}).items():
        if start > 0:
            ax.axvline(start, color="grey", lw=0.8, ls=":")
            ax.text(start, bottom, f" {name} stage", va="bottom", ha="left", fontsize=8, color="grey")
    lines = ax.get_legend_handles_labels()
    more = lr_axis.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper right", fontsize=8)
    ax.set_title(title or "xmodel2 pretraining")
    fig.tight_layout()
    out_png = Path(out_png)
    tmp = out_png.with_name(f".{out_png.stem}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out_png)
    return out_png


def _plot_accuracies(axis, records: list[dict], tasks: list[str]) -> None:
    """One line per task: its headline accuracy at each step it was scored."""
    for key in tasks:
        points = [(r["tokens"], r[key]) for r in records if r.get(key) is not None]
        axis.plot(*zip(*points), marker="o", ms=4, lw=1.2, label=key.removeprefix("eval/"))
    axis.set_xlabel("training tokens")
    axis.set_ylabel("task accuracy (in-loop)")
    axis.set_ylim(0, 1)
    axis.grid(alpha=0.3)
    axis.legend(loc="upper left", fontsize=8)
