"""Learning-rate transfer: does the best LR stay put as the proxy gets wider?

For each width and each arm (μP, and standard parameterization as the control) a proxy is
trained at every LR of a log2 grid (`train_proxy`: the production WSD shape on the bundled
corpus, held-out loss). Each curve's optimum is found in octaves (`find_optimum`); a curve whose
best point sits on a grid edge gets one more octave on that side, up to `max_extensions` times.

Verdict: "pass" when μP's optima span at most `tolerance` octaves across the widths while SP's
span more; "fail" when μP's span more; "inconclusive" when an optimum is missing or still on an
edge, or when SP does not drift either (the sweep then cannot tell the two apart).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from xmodel2.windtunnel.optimum import Optimum, find_optimum
from xmodel2.windtunnel.proxy import ProxyData, ProxyJob, ProxySettings, proxy_model, run_in_workers

ARMS = {"mup": "μP", "sp": "standard parameterization"}


@dataclass(frozen=True)
class TransferSettings:
    widths: tuple[int, ...]
    log2_lrs: tuple[float, ...]
    proxy: ProxySettings = field(default_factory=ProxySettings)
    layers: int = 2
    head_dim: int = 32
    dim_model_base: int = 64  # μP's base width; SP ignores it
    init_std: float = 0.1  # μP: embedding std, hidden std init_std/sqrt(m); SP: every matrix
    workers: int = 2
    max_extensions: int = 2  # extra octaves per curve when its best point sits on an edge
    tolerance: float = 1.0  # octaves


@dataclass
class Run:
    arm: str
    width: int
    log2_lr: float
    val_loss: float
    diverged: bool
    seconds: float

    def to_dict(self) -> dict:
        out = asdict(self)
        out["lr"] = 2.0 ** self.log2_lr
        out["val_loss"] = self.val_loss if math.isfinite(self.val_loss) else None
        return out


def run_lr_transfer(settings: TransferSettings, data: ProxyData,
                    log: Callable[[str], None] = lambda _: None) -> dict:
    started = time.perf_counter()
    runs: dict[tuple[str, int], dict[float, Run]] = {(a, w): {} for a in ARMS for w in settings.widths}
    extensions = {key: 0 for key in runs}
    pending = [(arm, width, x) for (arm, width) in runs for x in settings.log2_lrs]
    total = len(pending)
    while pending:
        jobs = [ProxyJob((arm, width, x), _config(settings, arm, width, data.vocab_size), 2.0 ** x,
                         data, settings.proxy) for arm, width, x in pending]
        for job, result in run_in_workers(jobs, settings.workers):
            arm, width, x = job.key
            runs[arm, width][x] = Run(arm, width, x, result.val_loss, result.diverged, result.seconds)
            done = sum(len(curve) for curve in runs.values())
            loss = "diverged" if result.diverged else f"{result.val_loss:.4f}"
            log(f"[{done}/{total}] {arm} width {width} lr 2^{x:.3g}: val loss {loss} "
                f"({result.seconds:.0f} s, {time.perf_counter() - started:.0f} s elapsed)")
        pending = []
        for key, curve in runs.items():
            optimum = _optimum(curve)
            if optimum is not None and optimum.edge and extensions[key] < settings.max_extensions:
                extensions[key] += 1
                x = min(curve) - 1 if optimum.edge == "low" else max(curve) + 1
                pending.append((*key, x))
                log(f"{key[0]} width {key[1]}: best LR on the {optimum.edge} edge, adding lr 2^{x:.3g}")
        total += len(pending)
    optima = {arm: {w: _optimum(runs[arm, w]) for w in settings.widths} for arm in ARMS}
    status, reason, spreads, drifts = verdict(optima, settings.tolerance)
    return {
        "settings": _settings_dict(settings),
        "runs": [run.to_dict() for curve in runs.values() for _, run in sorted(curve.items())],
        "optima": {arm: {str(w): _optimum_dict(o) for w, o in by_width.items()}
                   for arm, by_width in optima.items()},
        "spread_octaves": spreads,
        "drift_octaves": drifts,
        "verdict": status,
        "reason": reason,
        "seconds": time.perf_counter() - started,
    }


def _config(settings: TransferSettings, arm: str, width: int, vocab_size: int):
    return proxy_model(width, settings.layers, vocab_size, settings.proxy.seq_len, mup=arm == "mup",
                       head_dim=settings.head_dim, dim_model_base=settings.dim_model_base,
                       init_std=settings.init_std)


def _optimum(curve: dict[float, Run]) -> Optimum | None:
    xs = sorted(curve)
    return find_optimum(xs, [curve[x].val_loss for x in xs])


def _optimum_dict(optimum: Optimum | None) -> dict | None:
    if optimum is None:
        return None
    return {"log2_lr": optimum.log2_lr, "lr": optimum.lr, "loss": optimum.loss, "edge": optimum.edge}


def _settings_dict(settings: TransferSettings) -> dict:
    out = asdict(settings)
    out["proxy"]["mixture"] = dict(settings.proxy.mixture)
    return out


def verdict(optima: dict[str, dict[int, Optimum | None]], tolerance: float
            ) -> tuple[str, str, dict[str, float | None], dict[str, float | None]]:
    """(status, reason, spread per arm, drift per arm), in octaves.

    Spread: max - min of the optima across widths. Drift: widest width's optimum minus the
    narrowest's (negative: the best LR falls as width grows, SP's expected direction).
    """
    spreads: dict[str, float | None] = {}
    drifts: dict[str, float | None] = {}
    problems = []
    for arm, by_width in optima.items():
        found = {w: o for w, o in by_width.items() if o is not None}
        for w, o in by_width.items():
            if o is None:
                problems.append(f"{arm} width {w}: every run diverged")
            elif o.edge:
                problems.append(f"{arm} width {w}: best LR still on the {o.edge} edge of the grid")
        xs = [o.log2_lr for o in found.values()]
        spreads[arm] = max(xs) - min(xs) if xs else None
        drifts[arm] = (found[max(found)].log2_lr - found[min(found)].log2_lr) if found else None
    if problems:
        return "inconclusive", "; ".join(problems), spreads, drifts
    mup, sp = spreads["mup"], spreads["sp"]
    if mup > tolerance:
        return ("fail", f"μP optimum moves {mup:.2f} octaves across widths (> {tolerance:g})",
                spreads, drifts)
    if sp <= tolerance:
        return ("inconclusive", f"μP optimum moves {mup:.2f} octaves, but the SP control moves only "
                f"{sp:.2f} (<= {tolerance:g}): this sweep cannot tell μP from SP; use wider "
                "widths or longer runs (the full profile)", spreads, drifts)
    return ("pass", f"μP optimum moves {mup:.2f} octaves (<= {tolerance:g}) while SP's moves "
            f"{sp:.2f} (drift {drifts['sp']:+.2f})", spreads, drifts)


def format_table(result: dict) -> str:
    """Loss grid per arm (rows: widths, columns: log2 LR) and the optima, as plain text."""
    lines = []
    xs = sorted({r["log2_lr"] for r in result["runs"]})
    for arm, name in ARMS.items():
        lines.append(f"{name} ({arm}): held-out loss by width (rows) and log2 LR (columns)")
        lines.append(f"{'width':>6} " + " ".join(f"{x:>7.3g}" for x in xs) + f" {'optimum (log2 / lr)':>24}")
        for width, optimum in result["optima"][arm].items():
            losses = {r["log2_lr"]: r for r in result["runs"] if r["arm"] == arm and str(r["width"]) == width}
            cells = [_cell(losses.get(x)) for x in xs]
            best = "none" if optimum is None else (
                f"{optimum['log2_lr']:+.2f} / {optimum['lr']:.2e}" + (f" ({optimum['edge']} edge)"
                                                                      if optimum["edge"] else ""))
            lines.append(f"{width:>6} " + " ".join(f"{c:>7}" for c in cells) + f" {best:>24}")
        spread, drift = result["spread_octaves"][arm], result["drift_octaves"][arm]
        if spread is not None:
            lines.append(f"  spread {spread:.2f} octaves, drift {drift:+.2f} (widest minus narrowest)")
        lines.append("")
    lines.append(f"verdict: {result['verdict'].upper()}: {result['reason']}")
    return "\n".join(lines)


def _cell(run: dict | None) -> str:
    if run is None:
        return ""
    return "div" if run["val_loss"] is None else f"{run['val_loss']:.3f}"
