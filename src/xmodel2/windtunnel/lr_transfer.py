"""Learning-rate transfer: does the best LR stay put as the proxy gets wider?

For each width and each arm (μP, and standard parameterization as the control) a proxy is
trained at every LR of a log2 grid (`train_proxy`: the production WSD shape on the bundled
corpus, held-out loss), once per seed (each seed its own initialisation and data order). Each
curve's optimum is found in octaves (`find_optimum`); when any seed's best point sits on a grid
edge, every seed gets one more octave on that side, up to `max_extensions` times.

The drift of the optimum is its slope against log2 width, in octaves per doubling, one per
seed; its mean gets a t-interval over the seeds (`intervals`). Verdict, at 95% confidence:
"pass" when μP's drift interval lies inside ±`tolerance` and SP's excludes zero (the control
does drift, so the sweep can see drift); "fail" when μP's interval lies wholly outside
±`tolerance`; "inconclusive" otherwise, and whenever an optimum is missing or still on an edge.
With one seed there is no interval and the verdict is taken on the point drifts, and says so.

The tolerance, 0.25 octave per doubling: a wind tunnel transfers from widths of 64-512 to the
1.2B model's 1,536, about 2-5 doublings, so 0.25 per doubling keeps the transferred LR within
about 1.25 octaves (a factor 2.4) in the worst case, inside the flat bottom of the curves;
and it is a quarter of the 1 octave per doubling that standard parameterization's optimum
moves for Adam's hidden matrices (their update size grows with width), the drift μP removes.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from xmodel2.errors import UserError

from xmodel2.windtunnel.intervals import CONFIDENCE, Interval, drift_interval, t_interval
from xmodel2.windtunnel.optimum import Optimum, find_optimum
from xmodel2.windtunnel.proxy import ProxyData, ProxyJob, ProxySettings, proxy_model, run_in_workers

ARMS = {"mup": "μP", "sp": "standard parameterization"}


@dataclass(frozen=True)
class TransferSettings:
    widths: tuple[int, ...]
    log2_lrs: tuple[float, ...]
    proxy: ProxySettings = field(default_factory=ProxySettings)
    seeds: int = 3  # replications: seeds proxy.seed, proxy.seed + 1, ...
    layers: int = 2
    head_dim: int = 32
    dim_model_base: int = 64  # μP's base width; SP ignores it
    init_std: float = 0.1  # μP: embedding std, hidden std init_std/sqrt(m); SP: every matrix
    workers: int = 2
    max_extensions: int = 2  # extra octaves per curve when its best point sits on an edge
    tolerance: float = 0.25  # octaves of drift per doubling of width


@dataclass
class Run:
    arm: str
    width: int
    seed: int
    log2_lr: float
    val_loss: float
    diverged: bool
    seconds: float

    def to_dict(self) -> dict:
        out = asdict(self)
        out["lr"] = 2.0 ** self.log2_lr
        out["val_loss"] = self.val_loss if math.isfinite(self.val_loss) else None
        return out


Curves = dict[tuple[str, int, int], dict[float, Run]]  # (arm, width, seed) -> log2 LR -> run


def run_lr_transfer(settings: TransferSettings, data: ProxyData,
                    log: Callable[[str], None] = lambda _: None, journal: Path | None = None) -> dict:
    """The sweep, its optima, drifts and verdict. With `journal` (a JSON Lines file), every
    finished run is appended to it as it ends, and runs already there are not trained again:
    a killed sweep resumes, and more seeds, widths or LRs add to an earlier sweep."""
    if settings.seeds < 1:
        raise ValueError("seeds must be at least 1")
    started = time.perf_counter()
    seeds = [settings.proxy.seed + i for i in range(settings.seeds)]
    curves: Curves = {(a, w, s): {} for a in ARMS for w in settings.widths for s in seeds}
    finished = _read_journal(journal, _run_fingerprint(settings, data)) if journal else {}
    extensions = {(a, w): 0 for a in ARMS for w in settings.widths}
    pending = [(arm, width, seed, x) for (arm, width, seed) in curves for x in settings.log2_lrs]
    total = len(pending)
    while pending:
        recorded = [key for key in pending if key in finished]
        for key in recorded:
            curves[key[:3]][key[3]] = finished[key]
        if recorded:
            log(f"{len(recorded)} runs already in {journal}, {len(pending) - len(recorded)} to train")
        pending = [key for key in pending if key not in finished]
        jobs = [ProxyJob((arm, width, seed, x), _config(settings, arm, width, data.vocab_size), 2.0 ** x,
                         data, _with_seed(settings.proxy, seed)) for arm, width, seed, x in pending]
        for job, result in run_in_workers(jobs, settings.workers):
            arm, width, seed, x = job.key
            run = Run(arm, width, seed, x, result.val_loss, result.diverged, result.seconds)
            curves[arm, width, seed][x] = run
            if journal:
                _append_line(journal, run.to_dict())
            done = sum(len(curve) for curve in curves.values())
            loss = "diverged" if result.diverged else f"{result.val_loss:.4f}"
            log(f"[{done}/{total}] {arm} width {width} seed {seed} lr 2^{x:.3g}: val loss {loss} "
                f"({result.seconds:.0f} s, {time.perf_counter() - started:.0f} s elapsed)")
        pending = []
        for (arm, width), used in extensions.items():
            edges = {o.edge for s in seeds if (o := _optimum(curves[arm, width, s])) is not None and o.edge}
            grid = curves[arm, width, seeds[0]]
            for edge in sorted(edges):
                if used >= settings.max_extensions:
                    break
                used += 1
                x = min(grid) - 1 if edge == "low" else max(grid) + 1
                pending += [(arm, width, s, x) for s in seeds]
                log(f"{arm} width {width}: best LR on the {edge} edge, adding lr 2^{x:.3g} for every seed")
            extensions[arm, width] = used
        total += len(pending)
    optima = {arm: {w: [_optimum(curves[arm, w, s]) for s in seeds] for w in settings.widths} for arm in ARMS}
    outcome = verdict(optima, settings.tolerance)
    return {
        "settings": _settings_dict(settings),
        "seeds": seeds,
        "confidence": CONFIDENCE,
        "runs": [run.to_dict() for curve in curves.values() for _, run in sorted(curve.items())],
        "optima": {arm: {str(w): _optima_dict(found, outcome.width_intervals[arm].get(w))
                         for w, found in by_width.items()} for arm, by_width in optima.items()},
        "drift": {arm: None if d is None else {**d.to_dict(), "per_seed": outcome.per_seed_drifts[arm]}
                  for arm, d in outcome.drifts.items()},
        "verdict": outcome.status,
        "reason": outcome.reason,
        "seconds": time.perf_counter() - started,
    }


def _run_fingerprint(settings: TransferSettings, data: ProxyData) -> dict:
    """What one run's loss depends on besides its arm, width, seed and LR."""
    proxy = _settings_dict(settings)["proxy"]
    proxy.pop("seed")
    return {"proxy": proxy, "layers": settings.layers, "head_dim": settings.head_dim,
            "dim_model_base": settings.dim_model_base, "init_std": settings.init_std,
            "vocab_size": data.vocab_size}


def _read_journal(path: Path, fingerprint: dict) -> dict[tuple, Run]:
    """Runs recorded in `path` (its first line: the fingerprint they were made with). A last line
    cut short by a kill is ignored; a journal of other settings is refused."""
    fingerprint = json.loads(json.dumps(fingerprint))  # as it reads back (tuples become lists)
    if not path.is_file():
        _append_line(path, {"fingerprint": fingerprint})
        return {}
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    try:
        header = json.loads(lines[0])["fingerprint"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path}:1: not an lr-transfer journal; use another --out") from None
    if header != fingerprint:
        changed = sorted(k for k in set(header) | set(fingerprint) if header.get(k) != fingerprint.get(k))
        raise UserError(f"{path}: made with other settings ({', '.join(changed)} differ); use another "
                        "--out or delete it")
    runs = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            run = Run(r["arm"], r["width"], r["seed"], r["log2_lr"],
                      math.inf if r["val_loss"] is None else r["val_loss"], r["diverged"], r["seconds"])
        except (ValueError, KeyError, TypeError):
            if number == len(lines) and not text.endswith("\n"):
                break  # the line a kill cut short: that run is trained again
            raise UserError(f"{path}:{number}: not a run record") from None
        runs[run.arm, run.width, run.seed, run.log2_lr] = run
    return runs


def _append_line(path: Path, record: dict) -> None:
    """One JSON line, flushed to disk before the sweep goes on (a kill loses at most this line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _with_seed(proxy: ProxySettings, seed: int) -> ProxySettings:
    return replace(proxy, seed=seed)


def _config(settings: TransferSettings, arm: str, width: int, vocab_size: int):
    return proxy_model(width, settings.layers, vocab_size, settings.proxy.seq_len, mup=arm == "mup",
                       head_dim=settings.head_dim, dim_model_base=settings.dim_model_base,
                       init_std=settings.init_std)


def _optimum(curve: dict[float, Run]) -> Optimum | None:
    xs = sorted(curve)
    return find_optimum(xs, [curve[x].val_loss for x in xs])


def _optima_dict(per_seed: list[Optimum | None], interval: Interval | None) -> dict:
    return {"per_seed": [None if o is None else {"log2_lr": o.log2_lr, "loss": o.loss, "edge": o.edge}
                         for o in per_seed],
            "interval": None if interval is None else interval.to_dict()}


def _settings_dict(settings: TransferSettings) -> dict:
    out = asdict(settings)
    out["proxy"]["mixture"] = dict(settings.proxy.mixture)
    return out


@dataclass
class Verdict:
    status: str  # pass, fail, inconclusive
    reason: str
    drifts: dict[str, Interval | None]  # per arm, octaves per doubling; None when optima are missing
    per_seed_drifts: dict[str, list[float]]
    width_intervals: dict[str, dict[int, Interval]]  # per arm and width: the optimum's interval


def verdict(optima: dict[str, dict[int, list[Optimum | None]]], tolerance: float) -> Verdict:
    """The verdict on per-seed optima (arm -> width -> one optimum per seed); see the module doc."""
    problems = []
    drifts: dict[str, Interval | None] = {}
    per_seed: dict[str, list[float]] = {}
    width_intervals: dict[str, dict[int, Interval]] = {}
    for arm, by_width in optima.items():
        usable = True
        for w, found in by_width.items():
            for i, o in enumerate(found):
                where = f"{arm} width {w}" + (f" seed #{i + 1}" if len(found) > 1 else "")
                if o is None:
                    problems.append(f"{where}: every run diverged")
                elif o.edge:
                    problems.append(f"{where}: best LR still on the {o.edge} edge of the grid")
                usable = usable and o is not None and not o.edge
        width_intervals[arm] = {w: t_interval([o.log2_lr for o in found]) for w, found in by_width.items()
                                if all(o is not None for o in found)}
        n_seeds = len(next(iter(by_width.values())))
        if usable and len(by_width) >= 2:
            drifts[arm], per_seed[arm] = drift_interval(
                [{w: found[s].log2_lr for w, found in by_width.items()} for s in range(n_seeds)])
        else:
            drifts[arm], per_seed[arm] = None, []
    if problems:
        return Verdict("inconclusive", "; ".join(problems), drifts, per_seed, width_intervals)
    if len(next(iter(optima["mup"].values()))) == 1:
        status, reason = _point_verdict(drifts["mup"].mean, drifts["sp"].mean, tolerance)
    else:
        status, reason = _interval_verdict(drifts["mup"], drifts["sp"], tolerance)
    return Verdict(status, reason, drifts, per_seed, width_intervals)


def _interval_verdict(mup: Interval, sp: Interval, tolerance: float) -> tuple[str, str]:
    level = f"{CONFIDENCE:.0%}"
    mup_text = f"μP drift {mup.text()} octave/doubling ({level} CI, {mup.n} seeds)"
    sp_text = f"SP drift {sp.text()}"
    if mup.low > tolerance or mup.high < -tolerance:
        return "fail", f"{mup_text} lies outside ±{tolerance:g}"
    problems = []
    if not mup.within(-tolerance, tolerance):
        problems.append(f"{mup_text} is not inside ±{tolerance:g}: more seeds, or longer runs, narrow it")
    if sp.contains(0.0):
        problems.append(f"{sp_text} contains 0: the control does not drift, so this sweep cannot tell "
                        "μP from SP; use wider widths or longer runs (the middle or full profile)")
    if problems:
        return "inconclusive", "; ".join(problems)
    return "pass", f"{mup_text} lies inside ±{tolerance:g}, while {sp_text} excludes 0"


def _point_verdict(mup: float, sp: float, tolerance: float) -> tuple[str, str]:
    prefix = "one seed, no error bars: "
    if abs(mup) > tolerance:
        return "fail", f"{prefix}μP drift {mup:+.2f} octave/doubling is outside ±{tolerance:g}"
    if abs(sp) <= tolerance:
        return ("inconclusive", f"{prefix}μP drift {mup:+.2f} octave/doubling, but the SP control drifts "
                f"only {sp:+.2f}: this sweep cannot tell μP from SP")
    return "pass", f"{prefix}μP drift {mup:+.2f} octave/doubling (within ±{tolerance:g}), SP {sp:+.2f}"


def format_table(result: dict) -> str:
    """Mean loss grid per arm (rows: widths, columns: log2 LR), the optima and drifts, as text."""
    n_seeds = len(result["seeds"])
    level = f"{result['confidence']:.0%}"
    lines = [f"{n_seeds} seed(s) per point: {', '.join(map(str, result['seeds']))}; intervals are "
             f"{level} t-intervals over the seeds", ""]
    xs = sorted({r["log2_lr"] for r in result["runs"]})
    for arm, name in ARMS.items():
        lines.append(f"{name} ({arm}): held-out loss, mean over seeds, by width (rows) and log2 LR (columns)")
        lines.append(f"{'width':>6} " + " ".join(f"{x:>7.3g}" for x in xs) + f"  {'optimum log2 LR':<28}")
        for width, optimum in result["optima"][arm].items():
            cells = [_cell([r for r in result["runs"] if r["arm"] == arm and str(r["width"]) == width
                            and r["log2_lr"] == x]) for x in xs]
            lines.append(f"{width:>6} " + " ".join(f"{c:>7}" for c in cells) + f"  {_optimum_text(optimum)}")
        drift = result["drift"][arm]
        if drift is not None:
            lines.append(f"  drift {Interval.from_dict(drift).text()} octave per doubling of width; per seed: "
                         + ", ".join(f"{d:+.2f}" for d in drift["per_seed"]))
        lines.append("")
    tolerance = result["settings"]["tolerance"]
    lines.append(f"tolerance: μP passes when its drift interval lies inside ±{tolerance:g} octave per doubling")
    lines.append(f"verdict: {result['verdict'].upper()}: {result['reason']}")
    return "\n".join(lines)


def _optimum_text(optimum: dict) -> str:
    interval = optimum["interval"]
    if interval is None:
        return "none (a seed's runs all diverged)"
    text = Interval.from_dict(interval).text()
    edges = sorted({o["edge"] for o in optimum["per_seed"] if o["edge"]})
    return text + (f" ({'/'.join(edges)} edge)" if edges else "")


def _cell(runs: list[dict]) -> str:
    if not runs:
        return ""
    finite = [r["val_loss"] for r in runs if r["val_loss"] is not None]
    if not finite:
        return "div"
    return f"{sum(finite) / len(finite):.3f}" + ("*" if len(finite) < len(runs) else "")
