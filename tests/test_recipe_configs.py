"""The shipped recipe configs: the Xmodel-2 1.2B run and its single-GPU rehearsal load as run
configs, and their numbers are the report's (arXiv 2412.19638) where it states them."""

from __future__ import annotations

import pytest

from xmodel2.train.runconfig import PACKAGE_CONFIGS, load_run_config, model_config
from xmodel2.train.sizing import batch_schedule

RECIPE = PACKAGE_CONFIGS / "xmodel2-1.2b.yaml"
REHEARSAL = PACKAGE_CONFIGS / "xmodel2-tiny.yaml"
REPORT_VOCAB = 65280


def stage_tokens(run) -> list[int]:
    """Tokens each stage trains on: the sequences the batch schedule gives its steps, times seq_len."""
    batches = batch_schedule(run)
    tokens, start = [], 0
    for steps in run.stage_steps():
        tokens.append((batches.offset(start + steps) - batches.offset(start)) * run.data.seq_len)
        start += steps
    return tokens


def sft_share(mixture: dict[str, float]) -> float:
    return sum(share for name, share in mixture.items() if name.startswith("sft-"))


@pytest.mark.parametrize("path", [RECIPE, REHEARSAL], ids=lambda p: p.stem)
def test_recipe_loads(path):
    run = load_run_config(path, [])
    assert [stage.name for stage in run.stages] == ["stable", "decay"]
    assert run.data.seq_len == 4096 and run.train.lr == 0.01
    assert run.stages[1].decay.shape == "exponential"
    assert sft_share(run.stages[1].mixture) == pytest.approx(0.64)
    assert sft_share(run.stages[0].mixture) == 0
    config = model_config(run, REPORT_VOCAB)
    assert config.max_position_embeddings == 4096
    assert (config.mup.scale_emb, config.mup.dim_model_base, config.mup.scale_depth) == (12, 256, 1.4)


def test_recipe_is_the_reports_run():
    run = load_run_config(RECIPE, [])
    config = model_config(run, REPORT_VOCAB)
    assert (config.hidden_size, config.intermediate_size, config.num_layers, config.num_heads,
            config.num_kv_heads, config.tie_embeddings) == (1536, 3840, 48, 24, 8, True)
    assert run.tokenizer.vocab_size == REPORT_VOCAB
    ramp = [size * run.data.seq_len for _, size in batch_schedule(run).segments]
    assert ramp[0] == pytest.approx(2e6, rel=0.1) and ramp[-1] == pytest.approx(3.93e6, rel=0.001)
    stable, decay = stage_tokens(run)
    assert stable == pytest.approx(1.5e12, rel=1e-3)
    assert run.stages[1].decay.half_life == 5000
    assert decay == run.stage_steps()[1] * ramp[-1]  # the decay runs at the full batch
    assert 20e9 <= decay <= 0.1 * stable  # at least one half-life's 20B tokens, at most a tenth of the stable stage
    assert all(size % 64 == 0 for _, size in batch_schedule(run).segments)  # splits over 64 GPUs


def test_rehearsal_has_the_recipes_data():
    recipe, rehearsal = load_run_config(RECIPE, []), load_run_config(REHEARSAL, [])
    assert rehearsal.data.sources.keys() == recipe.data.sources.keys()
    for ours, theirs in zip(rehearsal.stages, recipe.stages):
        assert ours.mixture == theirs.mixture
    # the same decay curve in shape: as many half-lives over the stage
    halvings = [run.stage_steps()[1] / run.stages[1].decay.half_life for run in (recipe, rehearsal)]
    assert halvings[0] == halvings[1] == 4
    stable, _ = stage_tokens(rehearsal)
    assert 1e9 < stable < 5e9  # hours on one GPU for the tiny shape, not days
