"""The coordinate check's verdict as a plain-text table."""

from __future__ import annotations

VERDICT_LINES = {
    "pass": "PASS: μP keeps every checked statistic flat and every negative control fails",
    "fail": "FAIL: μP does not keep the checked statistics flat (see the failures above)",
    "inconclusive": "INCONCLUSIVE: μP passes, but a negative control passes too, so the check "
                    "cannot tell them apart (use more steps, a larger LR or wider models)",
}


def _worst(entries: list[dict]) -> tuple[float | None, float | None, bool]:
    """Largest |slope| and spread over the checked entries, and whether all of them passed."""
    checked = [e for e in entries if e["checked"]]
    if any(e["slope"] is None for e in checked):
        return None, None, False
    slope = max((e["slope"] for e in checked), key=abs, default=None)
    spread = max((e["spread"] for e in checked), default=None)
    return slope, spread, all(e["passed"] for e in checked)


def _cell(entries: list[dict]) -> str:
    slope, spread, passed = _worst(entries)
    if slope is None:
        return "non-finite ✗" if entries else "-"
    return f"{slope:+.2f} {spread:5.2f}{' ' if passed else '✗'}"


def _describe(failure: dict) -> str:
    where = f"{failure['module']} {failure['statistic']} step {failure['step']}"
    if failure["slope"] is None:
        return f"{where}: non-finite or zero"
    return f"{where}: slope {failure['slope']:+.2f}, spread {failure['spread']:.2f}"


def format_table(result: dict) -> str:
    arms = result["arms"]
    names = list(arms)
    width = max(14, *(len(n) + 1 for n in names))
    lines = [
        f"coordinate check over {result['axis']} {result['values']}: worst log-log slope and "
        f"spread (max/min) per module over its checked steps and statistics; ✗ = fails "
        f"(|slope| > {result['criteria']['max_abs_slope']} or spread > "
        f"{result['criteria']['max_spread']})",
        "module".ljust(12) + "".join(n.rjust(width) for n in names),
    ]
    for module in result["modules"]:
        cells = [_cell(arms[n]["modules"][module]["act"] + arms[n]["modules"][module]["update"])
                 for n in names]
        lines.append(module.ljust(12) + "".join(c.rjust(width) for c in cells))
    lines.append("")
    for name, arm in arms.items():
        checks = sum(e["checked"] for m in arm["modules"].values()
                     for entries in m.values() for e in entries)
        role = "control" if arm["control"] else "subject"
        status = "pass" if arm["passed"] else "FAIL"
        line = f"{name:<17} {role:<8} {status:<5} {len(arm['failures']):>3}/{checks} checks failed"
        if arm["failures"]:
            worst = max(arm["failures"],
                        key=lambda f: float("inf") if f["slope"] is None else abs(f["slope"]))
            line += f"; worst: {_describe(worst)}"
        lines.append(line)
    lines.append("")
    lines.append(f"verdict: {VERDICT_LINES[result['verdict']]}")
    return "\n".join(lines)
