"""Log-likelihood of a continuation given a context, tokenized exactly as lm-evaluation-harness does.

The harness's rule (TemplateLM): trailing whitespace of the context moves to the front of the
continuation; `context + continuation` is encoded as one string and split after as many tokens
as the context alone encodes to, so the continuation's tokens are those of the joint encoding.
An empty context is replaced by one prefix token (BOS, else EOS). Inputs longer than the model's
context keep their last `max_length` tokens. Requests are scored longest first in right-padded
batches: with causal attention, padding after a row's last token cannot change its scores.
"""

from __future__ import annotations

from typing import Sequence

import torch

from xmodel2.model.generate import default_add_bos
from xmodel2.model.transformer import KVCache, Transformer

TokenPair = tuple[list[int], list[int]]


class Scorer:
    def __init__(self, model: Transformer, tokenizer, batch_size: int = 8, add_bos: bool | None = None,
                 max_length: int | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = max(1, batch_size)
        self.add_bos = default_add_bos(tokenizer) if add_bos is None else add_bos
        self.max_length = max_length or model.config.max_position_embeddings
        prefix = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
        if prefix is None:
            prefix = model.config.eos_token_id
        self.prefix_id: int = prefix

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_bos=self.add_bos)

    def encode_pair(self, context: str, continuation: str) -> TokenPair:
        if context == "":
            tokens = self.tokenizer.encode(continuation)
            if tokens and tokens[0] == self.prefix_id:
                return tokens[:1], tokens[1:]
            return [self.prefix_id], tokens
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.encode(context + continuation)
        head = self.encode(context)
        return head, whole[len(head):]

    def loglikelihood(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        return self.loglikelihood_tokens([self.encode_pair(c, x) for c, x in pairs])

    @torch.inference_mode()
    def loglikelihood_tokens(self, pairs: Sequence[TokenPair]) -> list[tuple[float, bool]]:
        """(sum of log-probabilities, whether every continuation token is the argmax) per pair.

        Pairs that share a context (the choices of one question) run the context once and the
        continuations from its KV cache; the numbers equal separate runs up to float rounding.
        """
        for _, continuation in pairs:
            if not continuation:
                raise ValueError("a continuation must have at least one token")
        results: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (context, continuation) in enumerate(pairs):
            fits = len(context) + len(continuation) <= self.max_length + 1
            groups.setdefault(tuple(context) if fits else ("long", i), []).append(i)
        singles = [i for members in groups.values() if len(members) == 1 for i in members]
        for key, members in groups.items():
            if len(members) > 1:
                scores = self._score_shared(list(key), [list(pairs[i][1]) for i in members])
                for i, score in zip(members, scores):
                    results[i] = score
        rows = {}
        for i in singles:
            tokens = (list(pairs[i][0]) + list(pairs[i][1]))[-(self.max_length + 1):]
            # A continuation longer than the context window is scored on its last max_length
            # tokens, the ones the window can predict (the harness assumes it never happens).
            rows[i] = (tokens[:-1], list(pairs[i][1])[-self.max_length:])
        order = sorted(singles, key=lambda i: -len(rows[i][0]))  # longest first: little padding
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            for i, score in zip(chunk, self.score_rows([rows[i] for i in chunk])):
                results[i] = score
        return results

    def score_rows(self, rows: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """Right-padded rows of (inputs, continuation); the last inputs predict the continuation."""
        longest = max(len(inputs) for inputs, _ in rows)
        batch = torch.zeros(len(rows), longest, dtype=torch.long)
        for r, (inputs, _) in enumerate(rows):
            batch[r, :len(inputs)] = torch.tensor(inputs, dtype=torch.long)
        hidden = self.model.hidden_states(batch.to(self.device))
        return [self._sum(hidden[r, len(inputs) - len(continuation):len(inputs)], continuation)
                for r, (inputs, continuation) in enumerate(rows)]

    def _score_shared(self, context: list[int], continuations: list[list[int]]) -> list[tuple[float, bool]]:
        model, n = self.model, len(continuations)
        tails = [c[:-1] for c in continuations]  # the tokens fed after the context
        width = max(1, max(len(t) for t in tails))
        cache = KVCache(model.config, 1, len(context) + width, device=self.device, dtype=model.activation_dtype)
        last = model.hidden_states(torch.tensor([context], device=self.device), cache=cache)[:, -1]
        out_hidden = None
        if width > 0 and any(tails):
            cache.keys = [k.expand(n, -1, -1, -1).clone() for k in cache.keys]
            cache.values = [v.expand(n, -1, -1, -1).clone() for v in cache.values]
            batch = torch.zeros(n, width, dtype=torch.long)
            for r, tail in enumerate(tails):
                batch[r, :len(tail)] = torch.tensor(tail, dtype=torch.long)
            out_hidden = model.hidden_states(batch.to(self.device), cache=cache)
        scores = []
        for r, continuation in enumerate(continuations):
            hidden = last if out_hidden is None else torch.cat([last, out_hidden[r, :len(continuation) - 1]])
            scores.append(self._sum(hidden, continuation))
        return scores

    def _sum(self, hidden: torch.Tensor, continuation: list[int]) -> tuple[float, bool]:
        logprobs = torch.log_softmax(self.model.logits(hidden).float(), dim=-1)
        target = torch.tensor(continuation, device=self.device)
        total = logprobs.gather(-1, target[:, None]).sum().item()
        return total, bool((logprobs.argmax(-1) == target).all())

    @property
    def device(self) -> torch.device:
        return self.model.device
