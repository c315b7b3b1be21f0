"""OpenAI request bodies -> `Job`s, refusing what the server cannot honour with the API's error shape.

Every refusal is an `ApiError` (HTTP status, message, the offending parameter, a code); the app
turns it into `{"error": {"message", "type", "param", "code"}}` as OpenAI's API does.
"""

from __future__ import annotations

import math

from xmodel2.errors import UserError
from xmodel2.model.generate import default_add_bos
from xmodel2.serve.engine import Job

DEFAULT_COMPLETION_TOKENS = 16  # the API's default for /v1/completions
# Parameters that change what the model returns and that this server does not implement:
# refused rather than silently ignored.
UNSUPPORTED = ("logprobs", "top_logprobs", "logit_bias", "tools", "functions", "best_of", "suffix", "echo")


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class RequestParser:
    def __init__(self, tokenizer, model_name: str, context: int) -> None:
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.context = context
        self.add_bos = default_add_bos(tokenizer)

    def completion(self, body) -> Job:
        self._common(body)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise ApiError(400, "'prompt' must be a string (one prompt per request)", "prompt")
        if not prompt:
            raise ApiError(400, "'prompt' must not be empty", "prompt")
        ids = self.tokenizer.encode(prompt, add_bos=self.add_bos)
        return self._job(body, ids, chat=False, default_tokens=DEFAULT_COMPLETION_TOKENS)

    def chat(self, body) -> Job:
        self._common(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects", "messages")
        plain = [self._message(i, m) for i, m in enumerate(messages)]
        try:
            ids = self.tokenizer.encode_chat(plain, add_generation_prompt=True)
        except UserError as exc:
            raise ApiError(400, str(exc), "messages") from None
        return self._job(body, ids, chat=True, default_tokens=None)

    # --- pieces ---
    def _common(self, body) -> None:
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        model = body.get("model")
        if model is None:
            raise ApiError(400, "'model' is required", "model")
        if model != self.model_name:
            raise ApiError(404, f"The model '{model}' does not exist; this server serves '{self.model_name}'",
                           "model", "model_not_found")
        for name in UNSUPPORTED:
            if body.get(name) not in (None, False, 0):
                raise ApiError(400, f"'{name}' is not supported by this server", name)
        n = body.get("n", 1)
        if n != 1:
            raise ApiError(400, f"'n' must be 1 (got {n!r}): one choice per request", "n")

    @staticmethod
    def _message(index: int, message) -> dict:
        if not isinstance(message, dict):
            raise ApiError(400, f"messages[{index}] must be an object with 'role' and 'content'", "messages")
        content = message.get("content")
        if isinstance(content, list):  # content parts: only text is understood
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise ApiError(400, f"messages[{index}].content: only text parts are supported", "messages")
            content = "".join(p["text"] for p in content)
        return {"role": message.get("role"), "content": content}

    def _job(self, body: dict, ids: list[int], chat: bool, default_tokens: int | None) -> Job:
        room = self.context - len(ids)
        if room <= 0:
            raise ApiError(400, f"This model's maximum context length is {self.context} tokens; the prompt "
                                f"has {len(ids)}", "messages" if chat else "prompt", "context_length_exceeded")
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if max_tokens is None:
            max_tokens = room if default_tokens is None else min(default_tokens, room)
        if not _is_int(max_tokens) or max_tokens < 0:
            raise ApiError(400, f"'max_tokens' must be a whole number >= 0 (got {max_tokens!r})", "max_tokens")
        if len(ids) + max_tokens > self.context:
            raise ApiError(400, f"This model's maximum context length is {self.context} tokens; the prompt has "
                                f"{len(ids)} and max_tokens asks for {max_tokens} more",
                           "max_tokens", "context_length_exceeded")
        temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
        top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
        if top_p == 0:
            raise ApiError(400, "'top_p' must be above 0", "top_p")
        seed = body.get("seed", 0)
        if not _is_int(seed) or seed < 0:
            raise ApiError(400, f"'seed' must be a whole number >= 0 (got {seed!r})", "seed")
        return Job(ids, max_tokens, temperature=temperature, top_p=None if top_p >= 1 else top_p, seed=seed,
                   stop=_stops(body.get("stop")), chat=chat)


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise ApiError(400, f"'{name}' must be a number from {low:g} to {high:g} (got {value!r})", name)
    return float(value)


def _stops(stop) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    # OpenAI's own API takes at most 4; evaluation tasks may need more, and nothing here limits them.
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise ApiError(400, "'stop' must be a string or a list of strings", "stop")
    return [s for s in stop if s]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
