"""The results table printed by `xmodel2 eval`, and its JSON file."""

from __future__ import annotations

import math

from xmodel2.eval.metrics import Metric

HEADER = ("task", "metric", "value", "±stderr", "n", "shots", "source")


def _number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}"


def table(metrics: list[Metric]) -> str:
    rows = [HEADER] + [(m.task, m.metric, _number(m.value), _number(m.stderr), str(m.n), str(m.shots), m.source)
                       for m in metrics]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def as_json(metrics: list[Metric], details: dict, settings: dict) -> dict:
    def clean(value):
        return None if isinstance(value, float) and math.isnan(value) else value

    return {"settings": settings,
            "results": [{k: clean(v) for k, v in m.to_dict().items()} for m in metrics],
            "details": details}
