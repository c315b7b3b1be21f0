"""Decay-stage mixtures stated as an SFT share plus a distribution over SFT categories.

The report's decay stage mixes the stable stage's pretraining data with SFT data (64% SFT in
five categories). Here a decay mixture is derived from a run config: the pretraining sources of
its decay stage keep their relative proportions scaled to `1 - sft_share`, and `sft_share` is
spread over the SFT categories by `category_weights`. All amounts are shares of the decay
stage's tokens (mixtures are stated in tokens, never as file lists), so `plan_stages` turns them into
token budgets. The SFT categories are sources named `sft-<category>`, prepared from the ChatML
JSONL files that `xmodel2.data.sft.prepare_sft` writes.
"""

from __future__ import annotations

import copy

from xmodel2.data.sft import CATEGORIES, PreparedSFT
from xmodel2.errors import UserError
from xmodel2.train.sizing import batch_schedule
from xmodel2.train.runconfig import DecaySection, RunConfig, SourceSection, StageSection

SFT_PREFIX = "sft-"
SFT_VALIDATION = "sft-validation"
# The report's half-life is 5000 steps of a ~1.5T-token run; a short run keeps the same shape by
# halving the LR every fifth of its decay stage.
HALF_LIFE_FRACTION = 0.2


def sft_source_name(category: str) -> str:
    return f"{SFT_PREFIX}{category}"


def add_sft_sources(run: RunConfig, prepared: PreparedSFT) -> RunConfig:
    """A copy of `run` with `sft-<category>` training sources and the held-out `sft-validation`."""
    run = copy.deepcopy(run)
    for category, path in prepared.train_files.items():
        run.data.sources[sft_source_name(category)] = SourceSection(inputs=[str(path.resolve())])
    if prepared.validation_file is not None:
        run.data.sources[SFT_VALIDATION] = SourceSection(inputs=[str(prepared.validation_file.resolve())],
                                                         held_out=True)
    return run


def decay_stage_index(run: RunConfig) -> int:
    """The stage with an LR decay (the last stage if none declares one)."""
    for index, stage in enumerate(run.stages):
        if stage.decay is not None:
            return index
    if not run.stages:
        raise UserError("stages: the run has no stages")
    return len(run.stages) - 1


def _shares(mixture: dict[str, float]) -> dict[str, float]:
    """Any mixture (shares or token counts) as shares that add up to 1."""
    total = sum(mixture.values())
    if total <= 0:
        raise UserError("decay mixture: the pretraining part is empty")
    return {name: amount / total for name, amount in mixture.items()}


def normalized_weights(category_weights: dict[str, float]) -> dict[str, float]:
    unknown = sorted(set(category_weights) - set(CATEGORIES))
    if unknown:
        raise UserError(f"category_weights: unknown categories {', '.join(unknown)} "
                        f"(categories: {', '.join(CATEGORIES)})")
    if any(w < 0 for w in category_weights.values()):
        raise UserError("category_weights: weights must not be negative")
    total = sum(category_weights.values())
    if total <= 0:
        raise UserError("category_weights: at least one weight must be positive")
    return {c: category_weights[c] / total for c in CATEGORIES if category_weights.get(c, 0) > 0}


def stage_tokens(run: RunConfig, index: int) -> int:
    steps = run.stage_steps()
    start = sum(steps[:index])
    batches = batch_schedule(run)
    return (batches.offset(start + steps[index]) - batches.offset(start)) * run.data.seq_len


def decay_mixture(run: RunConfig, sft_share: float, category_weights: dict[str, float]) -> dict[str, float]:
    """The decay stage's mixture (shares of its tokens) with `sft_share` of SFT data.

    `run` must already hold the `sft-<category>` sources (see `add_sft_sources`). Entries that
    would get less than two sequences of the stage are dropped and the rest renormalized, since
    a budget below one sequence cannot be realized.
    """
    if not 0.0 <= sft_share <= 1.0:
        raise UserError(f"sft_share must be in [0, 1], got {sft_share}")
    index = decay_stage_index(run)
    base = {name: amount for name, amount in run.stages[index].mixture.items()
            if not name.startswith(SFT_PREFIX)}
    mixture = {name: share * (1.0 - sft_share) for name, share in _shares(base).items()} if sft_share < 1 else {}
    if sft_share > 0:
        for category, weight in normalized_weights(category_weights).items():
            name = sft_source_name(category)
            if name not in run.data.sources:
                raise UserError(f"decay mixture: no SFT source {name!r} (no {category} data was prepared)")
            mixture[name] = sft_share * weight
    floor = 2 * run.data.seq_len / stage_tokens(run, index)
    kept = {name: share for name, share in mixture.items() if share >= floor}
    if not kept:
        raise UserError("decay mixture: the decay stage is too short for any source")
    return _shares(kept)


def with_decay_mixture(run: RunConfig, sft_share: float, category_weights: dict[str, float],
                       max_repeats: float | None = None) -> RunConfig:
    """A copy of `run` whose decay stage uses `decay_mixture(...)`, with exponential decay by default."""
    run = copy.deepcopy(run)
    index = decay_stage_index(run)
    mixture = decay_mixture(run, sft_share, category_weights)
    stage = run.stages[index]
    decay = stage.decay
    if decay is None:  # the report's exponential decay, scaled to the stage's length
        steps = run.stage_steps()[index]
        decay = DecaySection(shape="exponential", half_life=max(1.0, HALF_LIFE_FRACTION * steps))
    run.stages[index] = StageSection(name=stage.name, mixture=mixture, steps=stage.steps, decay=decay,
                                     max_repeats=stage.max_repeats if max_repeats is None else max_repeats)
    return run


def mixture_fragment(run: RunConfig) -> dict:
    """The SFT sources and the stages (decay mixture included) as a fragment for `pretrain --set-from`.

    Config fragments merge mappings key by key but replace lists, so all stages are given.
    """
    stages = run.to_dict()["stages"]
    index = decay_stage_index(run)
    stages[index]["mixture"] = {k: round(v, 6) for k, v in stages[index]["mixture"].items()}
    sources = {name: {"inputs": list(section.inputs), "held_out": section.held_out}
               for name, section in run.data.sources.items()
               if name.startswith(SFT_PREFIX) and (name in stages[index]["mixture"] or section.held_out)}
    return {"data": {"sources": sources}, "stages": stages}
