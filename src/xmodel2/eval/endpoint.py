"""Generation tasks through any OpenAI-compatible server (`xmodel2 eval --api-base URL --api-model NAME`).

The server gets what the in-process route gives the model: each document's prompt as plain text
on `/v1/completions` (the server's tokenizer adds BOS as its model wants), the task's stop
strings and token limit, temperature 0. The texts are scored by the same answer rules, so our own
`xmodel2 serve` gives the same numbers as evaluating the folder directly. Requests go out
`concurrency` at a time, for a server that batches them.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from xmodel2.errors import UserError
from xmodel2.eval.generation_tasks import GenerationResult
from xmodel2.eval.tasks import Task


class PromptTooLong(Exception):
    """The server refused a prompt that, with the tokens asked for, exceeds its model's context."""


class Endpoint:
    def __init__(self, api_base: str, model: str, api_key: str | None = None, timeout: float = 600.0) -> None:
        try:
            import openai
        except ImportError:
            raise UserError("--api-base needs the openai client: pip install 'xmodel2[serve]'") from None
        self._openai = openai
        self.api_base = api_base
        self.model = model
        # Local servers ignore the key; the client insists on one.
        self.client = openai.OpenAI(base_url=api_base, api_key=api_key or "unused", timeout=timeout, max_retries=2)

    def check(self) -> None:
        """Fail before any task runs: the server must answer and serve `model`."""
        try:
            served = [m.id for m in self.client.models.list()]
        except self._openai.APIConnectionError as exc:
            raise UserError(f"--api-base {self.api_base}: cannot connect ({exc.__cause__ or exc})") from None
        except self._openai.APIStatusError as exc:
            raise UserError(f"--api-base {self.api_base}: /models answered {exc.status_code} "
                            f"({_message(exc)})") from None
        if served and self.model not in served:
            raise UserError(f"--api-model {self.model}: the server at {self.api_base} serves "
                            f"{', '.join(served)}")

    def complete(self, prompt: str, stop: Sequence[str], max_tokens: int) -> str:
        """Greedy continuation of `prompt`, cut before the first stop string; PromptTooLong when refused."""
        stop = [s for s in stop if s]
        try:
            reply = self.client.completions.create(model=self.model, prompt=prompt, max_tokens=max_tokens,
                                                   temperature=0, stop=stop or None)
        except self._openai.BadRequestError as exc:
            if _is_context_error(exc):
                raise PromptTooLong(_message(exc)) from None
            raise UserError(f"--api-base {self.api_base}: request refused ({_message(exc)})") from None
        except self._openai.APIConnectionError as exc:
            raise UserError(f"--api-base {self.api_base}: connection lost ({exc.__cause__ or exc})") from None
        except self._openai.APIStatusError as exc:
            raise UserError(f"--api-base {self.api_base}: answered {exc.status_code} ({_message(exc)})") from None
        text = reply.choices[0].text or ""
        # Servers that do not cut at stop strings themselves (or cut after them) are cut here.
        cuts = [text.find(s) for s in stop if s in text]
        return text[:min(cuts)] if cuts else text


def generate_answers_via(endpoint: Endpoint, task: Task, concurrency: int = 8) -> tuple[list[GenerationResult], int]:
    """(results in document order, how many prompts the server refused as too long: scored as empty)."""
    refused = 0

    def answer(doc) -> str:
        nonlocal refused
        try:
            return endpoint.complete(doc.prompt, task.stop, task.max_new_tokens)
        except PromptTooLong:
            refused += 1
            return ""

    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        texts = list(pool.map(answer, task.docs))
    return [GenerationResult(doc, text) for doc, text in zip(task.docs, texts)], refused


def _is_context_error(exc) -> bool:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", body) if isinstance(body.get("error", body), dict) else body
    code = str(error.get("code") or "") + str(error.get("type") or "")
    message = _message(exc).lower()
    return "context_length" in code or "exceed_context" in code or "context length" in message \
        or "maximum context" in message


def _message(exc) -> str:
    body = exc.body if isinstance(getattr(exc, "body", None), dict) else {}
    error = body.get("error", body)
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    return str(getattr(exc, "message", exc))


def run_task_via(endpoint: Endpoint, spec: str, settings, outcome, concurrency: int = 8) -> None:
    """`runner.run_task` for a generation task, answered by the server; other kinds are refused."""
    import time

    from xmodel2.eval.generation_tasks import generation_metrics
    from xmodel2.eval.registry import load_task

    started = time.perf_counter()
    task = load_task(spec, settings.shots).limited(settings.limit)
    if task.kind != "generate":
        raise UserError(f"task {spec}: --api-base runs generation tasks (gsm8k, math500, ...) and the ReAct "
                        f"agents; {spec} scores log-likelihoods, which a chat/completions API does not give")
    results, refused = generate_answers_via(endpoint, task, concurrency)
    outcome.metrics += generation_metrics(task, results)
    outcome.details.setdefault(spec, {}).update(
        generations=[{"id": r.doc.doc_id, "gold": r.doc.answer, "text": r.text} for r in results],
        refused_as_too_long=refused, seconds=round(time.perf_counter() - started, 3))
