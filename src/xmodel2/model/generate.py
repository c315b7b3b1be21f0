"""Text generation with a KV cache: prefill the prompts once, then one token per step.

Prompts of different lengths are left-padded: padding is masked out of attention and position
ids count real tokens only, so every row sees exactly what it would see alone. Greedy decoding
(temperature 0) takes the argmax; otherwise logits are divided by the temperature, cut to the
top-k and to the top-p nucleus, and sampled from a seeded generator.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch

from xmodel2.errors import UserError
from xmodel2.model.transformer import KVCache, Transformer


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token ids, (batch,), from last-position logits (batch, vocab)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p (the first always stays).
        drop = probs.cumsum(dim=-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def generate_ids(model: Transformer, prompts: Sequence[Sequence[int]], max_new_tokens: int, *,
                 temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                 stop_ids: Iterable[int] = (), seed: int = 0,
                 should_stop: Callable[[int, list[int]], bool] | None = None,
                 compile: bool = False) -> list[list[int]]:
    """New token ids per prompt (a stop id ends a row and is not returned).

    `should_stop(row, new_ids)` is asked after every token (for stop strings). With `compile`,
    decode steps run through a `torch.compile`d fixed-shape step (built once per batch size and
    cache length, which is rounded up to a multiple of 128 so similar requests share it).
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise UserError("generate: every prompt needs at least one token")
    if max_new_tokens <= 0:
        return [[] for _ in prompts]
    device, dtype = model.device, model.activation_dtype
    batch, longest = len(prompts), max(len(p) for p in prompts)
    total = longest + max_new_tokens
    if compile:
        total = -(-total // 128) * 128

    input_ids = torch.zeros(batch, longest, dtype=torch.long)
    mask = torch.ones(batch, total, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, longest - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
        mask[row, :longest - len(prompt)] = 0
    input_ids, mask = input_ids.to(device), mask.to(device)
    padded = bool((mask[:, :longest] == 0).any())
    positions = (mask[:, :longest].cumsum(-1) - 1).clamp(min=0)

    cache = KVCache(model.config, batch, total, device=device, dtype=dtype)
    hidden = model.hidden_states(input_ids, positions, mask[:, :longest] if padded else None, cache)
    logits = model.logits(hidden[:, -1])
    next_position = positions[:, -1:] + 1
    if compile:
        step_fn = compiled_decode_step(model)
        cache.write_slots = torch.zeros(1, dtype=torch.long, device=device)
        key_mask = mask.bool() & (torch.arange(total, device=device) < longest)

    generator = torch.Generator(device=device).manual_seed(seed)
    stops = set(int(i) for i in stop_ids)
    finished = [False] * batch
    new_ids: list[list[int]] = [[] for _ in range(batch)]
    for step in range(max_new_tokens):
        tokens = sample_next(logits, temperature, top_k, top_p, generator)
        for row, token in enumerate(tokens.tolist()):
            if finished[row]:
                continue
            if token in stops:
                finished[row] = True
                continue
            new_ids[row].append(token)
            if should_stop is not None and should_stop(row, new_ids[row]):
                finished[row] = True
        if all(finished) or step == max_new_tokens - 1:
            break
        seen = longest + step + 1
        if compile:
            key_mask[:, seen - 1] = True
            cache.write_slots.fill_(seen - 1)
            logits = step_fn(tokens[:, None], next_position, key_mask, cache)
        else:
            hidden = model.hidden_states(tokens[:, None], next_position,
                                         mask[:, :seen] if padded else None, cache)
            logits = model.logits(hidden[:, -1])
        next_position = next_position + 1
    return new_ids


@torch.inference_mode()
def generate_many(model: Transformer, prompts: Sequence[Sequence[int]], max_new_tokens: int, *,
                  batch_size: int = 8, temperature: float = 0.0, top_k: int | None = None,
                  top_p: float | None = None, stop_ids: Iterable[int] = (), seed: int = 0,
                  should_stop: Callable[[int, list[int]], bool] | None = None) -> list[list[int]]:
    """`generate_ids` for any number of prompts, at most `batch_size` of them decoded together.

    Continuous batching: a row leaves the batch as soon as it ends, and the next waiting prompt
    is prefilled and joins in its place, so the batch stays full until the prompts run out
    instead of waiting for its slowest row. Rows are left-padded to a common cache length with
    per-row positions, as in `generate_ids`. Greedy outputs equal `generate_ids` run one prompt
    at a time; sampled ones depend on which rows share a step (one generator serves the batch).
    """
    if any(len(p) == 0 for p in prompts):
        raise UserError("generate: every prompt needs at least one token")
    if batch_size < 1:
        raise UserError(f"generate: batch size must be at least 1, got {batch_size}")
    new_ids: list[list[int]] = [[] for _ in prompts]
    if max_new_tokens <= 0:
        return new_ids
    waiting = deque(range(len(prompts)))
    generator = torch.Generator(device=model.device).manual_seed(seed)
    stops = set(int(i) for i in stop_ids)
    batch: _Rows | None = None
    live: list[int] = []  # the batch's slots still decoding
    while waiting or live:
        joining = [waiting.popleft() for _ in range(min(len(waiting), batch_size - len(live)))]
        fresh = _prefill(model, [prompts[i] for i in joining], joining, max_new_tokens) if joining else None
        if batch is None or not live:
            batch = fresh
        elif fresh is not None or len(live) < len(batch.rows):
            # Finished rows leave and new ones join in one copy of the cache.
            parts = [(batch, live)] + ([(fresh, list(range(len(joining))))] if fresh is not None else [])
            batch = _merge(model, parts, max_new_tokens, new_ids)
        tokens = sample_next(batch.logits, temperature, top_k, top_p, generator)
        live = []
        for slot, (row, token) in enumerate(zip(batch.rows, tokens.tolist())):
            if token in stops:
                continue
            new_ids[row].append(token)
            if len(new_ids[row]) < max_new_tokens and not (should_stop and should_stop(row, new_ids[row])):
                live.append(slot)
        if live:
            # Finished rows are fed too: one more row costs next to nothing in a step bound by
            # reading the weights, and they leave with the next copy.
            _feed(model, batch, tokens)
    return new_ids


@dataclass
class _Rows:
    """Rows decoded together: their cache (left-padded to `cache.length`) and next-token logits."""

    rows: list[int]  # prompt indices, one per batch row
    cache: KVCache
    mask: torch.Tensor  # (rows, cache.max_len): 1 where the cache holds a real token
    positions: torch.Tensor  # (rows, 1): the position of each row's next token
    logits: torch.Tensor  # (rows, vocab)


def _prefill(model: Transformer, prompts: list[Sequence[int]], rows: list[int], room: int) -> _Rows:
    """Left-padded prompts through the model, into a cache with `room` slots after the longest."""
    longest = max(len(p) for p in prompts)
    input_ids = torch.zeros(len(prompts), longest, dtype=torch.long)
    mask = torch.zeros(len(prompts), longest + room, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, longest - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
        mask[row, longest - len(prompt):longest] = 1
    input_ids, mask = input_ids.to(model.device), mask.to(model.device)
    positions = (mask[:, :longest].cumsum(-1) - 1).clamp(min=0)
    cache = KVCache(model.config, len(prompts), longest + room, device=model.device,
                    dtype=model.activation_dtype)
    prompt_mask = mask[:, :longest]
    padded = bool((prompt_mask == 0).any())
    hidden = model.hidden_states(input_ids, positions, prompt_mask if padded else None, cache)
    return _Rows(rows, cache, mask, positions[:, -1:] + 1, model.logits(hidden[:, -1]))


def _feed(model: Transformer, batch: _Rows, tokens: torch.Tensor) -> None:
    """Run one token per row through the model, updating the cache, positions and logits."""
    seen = batch.cache.length + 1
    batch.mask[:, seen - 1] = 1
    keys = batch.mask[:, :seen]
    hidden = model.hidden_states(tokens[:, None], batch.positions,
                                 keys if bool((keys == 0).any()) else None, batch.cache)
    batch.logits = model.logits(hidden[:, -1])
    batch.positions = batch.positions + 1


def _merge(model: Transformer, parts: list[tuple[_Rows, list[int]]], max_new_tokens: int,
           new_ids: list[list[int]]) -> _Rows:
    """One batch from the chosen slots of each part, their caches right-aligned to one length.

    Columns that are padding in every chosen row of a part are dropped, so the cache stays as
    short as its longest row, and the new cache has room for every row's remaining tokens.
    """
    device = parts[0][0].mask.device
    picked = []
    for part, slots in parts:
        index = torch.tensor(slots, device=device)
        used = part.cache.length
        mask = part.mask.index_select(0, index)[:, :used]
        span = used - int(mask.any(dim=0).nonzero()[0])
        picked.append((part, index, mask[:, used - span:], span))
    length = max(span for *_, span in picked)
    rows = [part.rows[s] for part, slots in parts for s in slots]
    room = max(max_new_tokens - len(new_ids[row]) for row in rows)
    cache = KVCache(model.config, len(rows), length + room, device=device, dtype=model.activation_dtype)
    cache.length = length
    mask = torch.zeros(len(rows), length + room, dtype=torch.long, device=device)
    start = 0
    for part, index, part_mask, span in picked:
        end, used = start + len(index), part.cache.length
        for merged, old in zip(cache.keys + cache.values, part.cache.keys + part.cache.values):
            merged[start:end, :, length - span:length] = old[:, :, used - span:used].index_select(0, index)
        mask[start:end, length - span:length] = part_mask
        start = end
    return _Rows(rows, cache, mask, torch.cat([p.positions.index_select(0, i) for p, i, *_ in picked]),
                 torch.cat([p.logits.index_select(0, i) for p, i, *_ in picked]))


def compiled_decode_step(model: Transformer) -> Callable:
    """`torch.compile(model.decode_step)`, built once per model."""
    step = getattr(model, "_compiled_decode_step", None)
    if step is None:
        step = torch.compile(model.decode_step, dynamic=False)
        model._compiled_decode_step = step
    return step


def generate(model: Transformer, tokenizer, prompts: list[str], max_new_tokens: int,
             temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
             stop: Sequence[str] | None = None, seed: int = 0, add_bos: bool | None = None,
             compile: bool = False) -> list[str]:
    """The continuation of each prompt, cut before the first stop string."""
    if add_bos is None:
        add_bos = default_add_bos(tokenizer)
    prompt_ids = [tokenizer.encode(text, add_bos=add_bos) for text in prompts]
    new_ids = generate_ids(model, prompt_ids, max_new_tokens, temperature=temperature, top_k=top_k,
                           top_p=top_p, stop_ids=stop_ids_for(model, tokenizer), seed=seed,
                           should_stop=stop_string_check(tokenizer, stop), compile=compile)
    return [cut_at_stop(continuation_text(tokenizer, p, n), stop) for p, n in zip(prompt_ids, new_ids)]


def stop_ids_for(model: Transformer, tokenizer, chat: bool = False) -> set[int]:
    ids = {model.config.eos_token_id, tokenizer.eos_id}
    if chat:
        ids.update(tokenizer.stop_ids)
    return {i for i in ids if i is not None}


def stop_string_check(tokenizer, stop: Sequence[str] | None) -> Callable[[int, list[int]], bool] | None:
    """A `should_stop` that decodes only the tail of the new tokens (long enough for any stop)."""
    stop = [s for s in (stop or []) if s]
    if not stop:
        return None
    # A character takes at most 4 byte-fallback tokens; one more covers a token cut at the edge.
    tail = 4 * max(len(s) for s in stop) + 1

    def should_stop(row: int, new: list[int]) -> bool:
        text = tokenizer.decode(new[-tail:])
        return any(s in text for s in stop)

    return should_stop


def cut_at_stop(text: str, stop: Sequence[str] | None) -> str:
    cuts = [text.find(s) for s in (stop or []) if s and s in text]
    return text[:min(cuts)] if cuts else text


def continuation_text(tokenizer, prompt_ids: list[int], new_ids: list[int]) -> str:
    """Decode prompt + continuation and drop the prompt's text, so word-initial spaces survive."""
    head = tokenizer.decode(prompt_ids)
    full = tokenizer.decode(list(prompt_ids) + list(new_ids))
    return full[len(head):] if full.startswith(head) else tokenizer.decode(new_ids)


def default_add_bos(tokenizer) -> bool:
    """tokenizer_config.json's `add_bos_token` if it says; else SentencePiece models get BOS."""
    config = tokenizer.path.parent / "tokenizer_config.json"
    if config.is_file():
        try:
            value = json.loads(config.read_text(encoding="utf-8")).get("add_bos_token")
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            value = None
        if isinstance(value, bool):
            return value and tokenizer.bos_id is not None
    return tokenizer.kind == "sentencepiece" and tokenizer.bos_id is not None
