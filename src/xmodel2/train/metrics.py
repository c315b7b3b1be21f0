"""Where training metrics go: `OUT/metrics.jsonl` (one JSON object per logged step), TensorBoard,
and a short postfix for the progress bar."""

from __future__ import annotations

import json
import math
from pathlib import Path


class MetricsLogger:
    """`write=False` (every rank but 0 under torchrun) keeps the last values in memory only."""

    def __init__(self, out_dir: str | Path, resume_step: int = 0, tensorboard: bool = True,
                 write: bool = True) -> None:
        self.path = Path(out_dir) / "metrics.jsonl"
        self.write = write
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

    def postfix(self) -> str:
        if not self.last:
            return ""
        parts = [f"loss {self.last['loss']:.3f}"]
        if self.last_val is not None:
            parts.append(f"val {self.last_val:.3f}")
        parts.append(f"lr {self.last['lr']:.2e}")
        if "tokens_per_s" in self.last:
            parts.append(f"{self.last['tokens_per_s']:,.0f} tok/s")
            parts.append(f"MFU {100 * self.last.get('mfu', 0):.1f}%")
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
