"""The generation side of the server: one worker thread decodes the waiting requests together.

HTTP handlers never run the model: they put a `Job` on the queue and await its events, so the
event loop keeps accepting and answering requests while the model works. The worker takes every
job waiting when it becomes free and runs those with the same sampling settings as one
left-padded batch (`generate_ids`, the decoder of `xmodel2 generate`); a job that arrives while a
batch runs waits for the next one (static batching: no row joins a batch in flight).

Each row keeps its own limits inside the batch: its `max_tokens`, its stop strings, and for
chat the end-of-turn token; its text reaches its handler token by token (for streaming), held
back while it could still be the start of a stop string.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from dataclasses import dataclass, field

from xmodel2.model.generate import continuation_text, cut_at_stop, generate_ids, stop_ids_for

MAX_BATCH = 16
REPLACEMENT = "\ufffd"  # what decoding shows for a character whose bytes have not all arrived


@dataclass
class Job:
    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 0.0
    top_p: float | None = None
    seed: int = 0
    stop: list[str] = field(default_factory=list)
    chat: bool = False  # stop at the chat end-of-turn token too
    # filled in by the engine
    loop: asyncio.AbstractEventLoop | None = None
    events: asyncio.Queue | None = None  # ("text", delta) ..., then ("done", finish_reason, count) or ("error", exc)
    cancelled: bool = False
    new_ids: list[int] = field(default_factory=list)
    sent: str = ""
    finish_reason: str = "length"

    def batch_key(self) -> tuple:
        # Greedy rows batch with any greedy row; sampled rows only with identical settings (one
        # generator draws for the whole batch, so a seed reproduces only the same batch).
        return (0.0,) if self.temperature == 0 else (self.temperature, self.top_p, self.seed)


class Engine:
    def __init__(self, model, tokenizer, max_batch: int = MAX_BATCH) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.context = model.config.max_position_embeddings
        self.stop_ids = stop_ids_for(model, tokenizer)
        self.chat_stop_ids = stop_ids_for(model, tokenizer, chat=True)
        self.batches_run = 0
        self.largest_batch = 0
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="xmodel2-serve-engine", daemon=True)
        self._worker.start()

    def submit(self, job: Job) -> Job:
        job.loop = asyncio.get_running_loop()
        job.events = asyncio.Queue()
        self._queue.put(job)
        return job

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=10)

    # --- the worker thread ---
    def _work(self) -> None:
        waiting: list[Job] = []
        while True:
            if not waiting:
                job = self._queue.get()
                if job is None:
                    return
                waiting.append(job)
            while True:  # everything that has arrived meanwhile joins the choice of a batch
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    return
                waiting.append(job)
            key = waiting[0].batch_key()
            batch = [j for j in waiting if j.batch_key() == key][:self.max_batch]
            waiting = [j for j in waiting if j not in batch]
            self._run(batch)

    def _run(self, batch: list[Job]) -> None:
        batch = [job for job in batch if not job.cancelled]
        if not batch:
            return
        self.batches_run += 1
        self.largest_batch = max(self.largest_batch, len(batch))
        first = batch[0]
        try:
            generate_ids(self.model, [job.prompt_ids for job in batch], max(job.max_tokens for job in batch),
                         temperature=first.temperature, top_p=first.top_p, seed=first.seed,
                         stop_ids=self.stop_ids, should_stop=lambda row, new: self._step(batch[row], new))
        except Exception as exc:  # the handlers answer 500; the worker goes on serving
            for job in batch:
                self._emit(job, ("error", exc))
            return
        for job in batch:
            self._finish(job)

    def _step(self, job: Job, new: list[int]) -> bool:
        """After each new token of `job`'s row: stream what is safe to show; True ends the row."""
        if job.cancelled:
            return True
        if job.chat and new[-1] in self.chat_stop_ids:
            job.finish_reason = "stop"
            job.new_ids = new[:-1]
            return True
        job.new_ids = list(new)
        text = self._text(job)
        if any(s in text for s in job.stop):
            job.finish_reason = "stop"
            return True
        if len(new) >= job.max_tokens:
            return True
        shown = _safe_prefix(text, job.stop)
        if len(shown) > len(job.sent) and shown.startswith(job.sent):
            self._emit(job, ("text", shown[len(job.sent):]))
            job.sent = shown
        return False

    def _finish(self, job: Job) -> None:
        if len(job.new_ids) < job.max_tokens and job.finish_reason == "length":
            job.finish_reason = "stop"  # ended by the end-of-text token
        text = cut_at_stop(self._text(job), job.stop)
        if text.startswith(job.sent) and len(text) > len(job.sent):
            self._emit(job, ("text", text[len(job.sent):]))
        self._emit(job, ("done", job.finish_reason, len(job.new_ids)))

    def _text(self, job: Job) -> str:
        return continuation_text(self.tokenizer, job.prompt_ids, job.new_ids)

    @staticmethod
    def _emit(job: Job, event: tuple) -> None:
        job.loop.call_soon_threadsafe(job.events.put_nowait, event)


def _safe_prefix(text: str, stops: list[str]) -> str:
    """The part of `text` that no later token can take back: not a character still missing bytes,
    not a tail that may grow into a stop string."""
    end = len(text)
    while end and text[end - 1] == REPLACEMENT:
        end -= 1
    held = 0
    for stop in stops:
        held = max([held] + [size for size in range(1, len(stop)) if text[:end].endswith(stop[:size])])
    return text[:end - held]
