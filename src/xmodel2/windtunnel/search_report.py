"""What a μP search leaves behind: best_config.yaml, search.json, history.png, good_region.png."""

from __future__ import annotations

import statistics
from pathlib import Path

import yaml

from xmodel2.fileio import atomic_write_json, atomic_write_text
from xmodel2.windtunnel.search import (check_fragment, config_fragment, fragment_overrides,
                                       importances, trial_rows)
from xmodel2.windtunnel.search_plots import plot_good_region, plot_history


def good_threshold(values: list[float]) -> float:
    """Default "good" cut: the best quarter of the completed trials (at least the best one)."""
    ordered = sorted(values)
    return ordered[max(0, len(ordered) // 4 - 1)]


def write_report(study, out: Path, url: str, threshold: float | None, seconds: float) -> dict:
    rows = trial_rows(study)
    done = [r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None]  # not diverged
    title = f"μP search {study.study_name!r}: {len(rows)} trials"
    summary: dict = {
        "study": study.study_name, "storage": url, "seconds_this_invocation": seconds,
        "trials": len(rows),
        "states": {s: sum(r["state"] == s for r in rows) for s in sorted({r["state"] for r in rows})},
        "seconds_per_trial": _timing(rows),
        "proxy": study.user_attrs.get("proxy"),
    }
    written = [plot_history(rows, out / "history.png", title)]
    if done:
        best = min(done, key=lambda r: r["value"])
        fragment = config_fragment(best["params"])
        check_fragment(fragment)
        cut = threshold if threshold is not None else good_threshold([r["value"] for r in done])
        values, how = importances(study)
        summary |= {"best": {"trial": best["number"], "value": best["value"], "params": best["params"]},
                    "config_fragment": fragment, "pretrain_overrides": fragment_overrides(fragment),
                    "importances": values, "importances_method": how, "good_threshold": cut}
        header = (f"# xmodel2 windtunnel search: best of {len(done)} completed trials of study "
                  f"{study.study_name!r}\n# (trial {best['number']}, held-out loss {best['value']:.4f}). "
                  f"Apply with:\n# xmodel2 pretrain CONFIG --set-from {out / 'best_config.yaml'}\n"
                  "# or: xmodel2 pretrain CONFIG " + " ".join(fragment_overrides(fragment)) + "\n")
        atomic_write_text(out / "best_config.yaml", header + yaml.safe_dump(fragment, sort_keys=False))
        written.append(out / "best_config.yaml")
        written.append(plot_good_region(rows, cut, out / "good_region.png", title))
    summary["trial_rows"] = rows
    atomic_write_json(out / "search.json", summary)
    summary["written"] = [str(p) for p in written + [out / "search.json"]]
    return summary


def _timing(rows: list[dict]) -> dict:
    out = {}
    for state in ("COMPLETE", "PRUNED"):
        seconds = [r["seconds"] for r in rows if r["state"] == state and r["seconds"] is not None]
        if seconds:
            out[state.lower()] = {"mean": statistics.fmean(seconds), "min": min(seconds),
                                  "max": max(seconds), "count": len(seconds)}
    return out


def format_summary(summary: dict) -> str:
    lines = [f"study {summary['study']!r}: {summary['trials']} trials "
             + ", ".join(f"{n} {s.lower()}" for s, n in summary["states"].items())]
    for state, t in summary["seconds_per_trial"].items():
        lines.append(f"  {state}: {t['mean']:.1f} s per trial (min {t['min']:.1f}, max {t['max']:.1f})")
    if "best" in summary:
        best = summary["best"]
        lines.append(f"best: trial {best['trial']}, held-out loss {best['value']:.4f}, {best['params']}")
        if summary["importances"]:
            ranked = summary["importances"].items()
            lines.append("importances: " + ", ".join(f"{k} {v:.2f}" for k, v in ranked))
        else:
            lines.append(f"importances: not available ({summary['importances_method']})")
        lines.append("pretrain with: " + " ".join(summary["pretrain_overrides"]))
    else:
        lines.append("no completed trial yet: no best config")
    return "\n".join(lines)
