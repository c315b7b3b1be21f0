"""Where training metrics go: `OUT/metrics.jsonl` (one JSON object per logged step), TensorBoard,
and a short postfix for the progress bar.

MFU is stated against a matmul rate measured on the machine (see `MatmulPeak`), never above 100%:
a step that seems faster than the peak shows "MFU n/a" and logs `mfu: null`.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Callable

MFU_NOT_AVAILABLE = "MFU n/a: step faster than the measured peak"


def mfu_text(mfu: float | None) -> str:
    """`MFU 41.5%`, or MFU_NOT_AVAILABLE for a figure above 100% (or none): a step cannot run
    faster than the machine's matmul peak, so such a figure says the peak was measured too low."""
    if mfu is None or not 0 <= mfu <= 1:
        return MFU_NOT_AVAILABLE
    return f"MFU {100 * mfu:.1f}%"


class MatmulPeak:
    """The matmul FLOP/s (all ranks together) that MFU is stated against: the best of the start-up
    measurement and one re-measurement, taken the first time a step seems to beat the peak.

    A start-up figure measured while other work shared the cores can come out several times too
    low, which would inflate every MFU of the run by as much.
    """

    def __init__(self, flops: float, remeasure: Callable[[], float] | None = None) -> None:
        self.at_start = self.best = flops
        self._remeasure = remeasure

    def remeasure(self) -> bool:
        """Measure once more and keep the higher figure; False when that was done already (or no
        measurement is possible)."""
        if self._remeasure is None:
            return False
        measure, self._remeasure = self._remeasure, None
        self.best = max(self.best, measure())
        return True

    def restated(self, mfu_at_start: float) -> float:
        """An MFU stated against the start-up figure, restated against the best one."""
        return mfu_at_start * self.at_start / self.best if self.best > 0 else math.inf


class MetricsLogger:
    """`write=False` (every rank but 0 under torchrun) keeps the last values in memory only."""

    def __init__(self, out_dir: str | Path, resume_step: int = 0, tensorboard: bool = True,
                 write: bool = True, peak: MatmulPeak | None = None) -> None:
        self.path = Path(out_dir) / "metrics.jsonl"
        self.write = write
        self.peak = peak  # the figure records' `mfu` was computed against, at start
        self.last: dict = {}
        self.last_val: float | None = None
        self.writer = None
        if not write:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._drop_after(resume_step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(Path(out_dir) / "tensorboard"), purge_step=resume_step + 1)
            except ImportError:  # tensorboard is a dependency, but keep training without it
                self.writer = None

    def _drop_after(self, step: int) -> None:
        """A resumed run re-does the steps after its checkpoint: forget what they logged."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
        self.path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")

    def log(self, record: dict) -> None:
        record = self._checked_mfu(record)
        self.last = record
        if "val_loss" in record:
            self.last_val = record["val_loss"]
        if not self.write:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            step = record["step"]
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step" and math.isfinite(value):
                    self.writer.add_scalar(f"train/{key}", value, step)
            for name, lr in record.get("lr_groups", {}).items():
                self.writer.add_scalar(f"lr/{name}", lr, step)
            self.writer.flush()

    def _checked_mfu(self, record: dict) -> dict:
        """`mfu` against the best peak measured, with that peak (`peak_flops`); None where the
        step would beat the peak even after measuring it again."""
        if "mfu" not in record:
            return record
        stated, peak = record["mfu"], self.peak
        mfu = stated if peak is None else peak.restated(stated)
        if mfu > 1 and peak is not None and peak.remeasure():
            mfu = peak.restated(stated)
            if self.write:
                print(f"xmodel2: matmul peak measured again: {peak.at_start / 1e9:,.0f} -> "
                      f"{peak.best / 1e9:,.0f} GFLOP/s (MFU is stated against the higher)",
                      file=sys.stderr, flush=True)
        checked = {**record, "mfu": mfu if 0 <= mfu <= 1 else None}
        if peak is not None:
            checked["peak_flops"] = peak.best
        return checked

    def postfix(self) -> str:
        if not self.last:
            return ""
        parts = [f"loss {self.last['loss']:.3f}"]
        if self.last_val is not None:
            parts.append(f"val {self.last_val:.3f}")
        parts.append(f"lr {self.last['lr']:.2e}")
        if "tokens_per_s" in self.last:
            parts.append(f"{self.last['tokens_per_s']:,.0f} tok/s")
            parts.append(mfu_text(self.last.get("mfu", 0.0)))
        return " ".join(parts)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(path: str | Path) -> list[dict]:
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class Progress:
    """Progress on the console: a tqdm bar on a terminal, one plain line per logged step otherwise
    (a bar redrawn into a log file is unreadable)."""

    def __init__(self, total: int, initial: int, logger: MetricsLogger, desc: str = "pretrain") -> None:
        import sys
        import time

        self.total, self.done, self.logger = total, initial, logger
        self.start_step, self.started = initial, time.perf_counter()
        self.bar = None
        self.stream = sys.stderr
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)

    def update(self, logged: bool) -> None:
        import time

        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(self.logger.postfix())
            return
        if logged:
            elapsed = time.perf_counter() - self.started
            rate = (self.done - self.start_step) / elapsed if elapsed > 0 else 0.0
            eta = (self.total - self.done) / rate if rate > 0 else 0.0
            print(f"step {self.done}/{self.total} | {self.logger.postfix()} | "
                  f"ETA {int(eta // 60)}:{int(eta % 60):02d}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
