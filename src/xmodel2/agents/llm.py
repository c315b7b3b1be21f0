"""What the ReAct loop asks of a language model: continue a prompt until a stop string.

Every ReAct turn resends the whole prompt (few-shot examples, question, turns so far), which
only grows. `ModelCompleter` keeps the keys and values of the last prompt it saw and recomputes
only the tokens after the longest common prefix: the few-shot examples are computed once per
task, and each turn costs its new tokens only. The result is the same greedy continuation as
`xmodel2.model.generate.generate` (up to float rounding from the split prefill).

`EndpointCompleter` asks an OpenAI-compatible server instead (`xmodel2 eval --api-base`): the same
prompt text, stop strings, token limit and greedy decoding; a prompt the server refuses as too
long for its context ends the episode as a full context does in process.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import torch

from xmodel2.eval.endpoint import Endpoint, PromptTooLong
from xmodel2.model.generate import continuation_text, cut_at_stop, stop_ids_for, stop_string_check
from xmodel2.model.transformer import KVCache, Transformer


class ContextFull(Exception):
    """The prompt leaves no room for the next turn within the model's context."""


class Completer(Protocol):
    def complete(self, prompt: str, stop: Sequence[str]) -> str:
        """Greedy continuation of `prompt`, cut before the first stop string (or ContextFull)."""


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class ModelCompleter:
    """Greedy decoding (ReAct used temperature 0) with a KV cache kept across calls."""

    def __init__(self, model: Transformer, tokenizer, add_bos: bool, max_new_tokens: int = 100,
                 context: int | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.add_bos = add_bos
        self.max_new_tokens = max_new_tokens
        self.context = context or model.config.max_position_embeddings
        self.stop_ids = stop_ids_for(model, tokenizer)
        self.cache: KVCache | None = None
        self.cached: list[int] = []  # the tokens whose keys and values the cache holds, in order

    @torch.inference_mode()
    def complete(self, prompt: str, stop: Sequence[str]) -> str:
        ids = self.tokenizer.encode(prompt, add_bos=self.add_bos)
        if len(ids) + self.max_new_tokens > self.context:
            raise ContextFull(f"{len(ids)} prompt tokens + {self.max_new_tokens} new > context {self.context}")
        if self.cache is None:
            self.cache = KVCache(self.model.config, 1, self.context, device=self.model.device,
                                 dtype=self.model.activation_dtype)
        keep = min(common_prefix(self.cached, ids), len(ids) - 1)  # at least one token gives the logits
        self.cache.length, self.cached = keep, ids[:keep]
        logits = self._feed(ids[keep:])
        should_stop = stop_string_check(self.tokenizer, stop)
        new: list[int] = []
        while len(new) < self.max_new_tokens:
            token = int(logits.argmax())
            if token in self.stop_ids:
                break
            new.append(token)
            if (should_stop is not None and should_stop(0, new)) or len(new) == self.max_new_tokens:
                break
            logits = self._feed([token])
        return cut_at_stop(continuation_text(self.tokenizer, ids, new), stop)

    def _feed(self, tokens: list[int]) -> torch.Tensor:
        """Run `tokens` after the cached ones; the last position's logits, (vocab,)."""
        hidden = self.model.hidden_states(torch.tensor([tokens], device=self.model.device), cache=self.cache)
        self.cached += tokens
        return self.model.logits(hidden[:, -1])[0]


class EndpointCompleter:
    """Greedy continuations from a server; the server keeps (or not) its own cache."""

    def __init__(self, endpoint: Endpoint, max_new_tokens: int = 100) -> None:
        self.endpoint = endpoint
        self.max_new_tokens = max_new_tokens

    def complete(self, prompt: str, stop: Sequence[str]) -> str:
        try:
            return self.endpoint.complete(prompt, stop, self.max_new_tokens)
        except PromptTooLong as exc:
            raise ContextFull(str(exc)) from None
