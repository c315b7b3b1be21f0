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
from xmodel2.model.transformer import Transformer

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
        """(sum of log-probabilities, whether every continuation token is the argmax) per pair."""
        rows = []
        for context, continuation in pairs:
            if not continuation:
                raise ValueError("a continuation must have at least one token")
            tokens = (list(context) + list(continuation))[-(self.max_length + 1):]
            rows.append((tokens[:-1], list(continuation)))
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        results: list[tuple[float, bool]] = [(0.0, False)] * len(rows)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            for index, result in zip(chunk, self._score_batch([rows[i] for i in chunk])):
                results[index] = result
        return results

    def _score_batch(self, rows: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        device = self.model.output_weight.device
        longest = max(len(inputs) for inputs, _ in rows)
        batch = torch.zeros(len(rows), longest, dtype=torch.long)
        for r, (inputs, _) in enumerate(rows):
            batch[r, :len(inputs)] = torch.tensor(inputs, dtype=torch.long)
        hidden = self.model.hidden_states(batch.to(device))
        out = []
        for r, (inputs, continuation) in enumerate(rows):
            # the last len(continuation) inputs predict the continuation's tokens
            positions = slice(len(inputs) - len(continuation), len(inputs))
            logprobs = torch.log_softmax(self.model.logits(hidden[r, positions]).float(), dim=-1)
            target = torch.tensor(continuation, device=device)
            total = logprobs.gather(-1, target[:, None]).sum().item()
            greedy = bool((logprobs.argmax(-1) == target).all())
            out.append((total, greedy))
        return out
