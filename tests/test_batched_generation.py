"""Continuous batching (`generate_many`): the same greedy tokens as decoding each prompt alone."""

import dataclasses
import random

import pytest
import torch

from xmodel2.errors import UserError
from xmodel2.eval.generation_tasks import generate_answers
from xmodel2.eval.registry import load_task
from xmodel2.model.config import ModelConfig
from xmodel2.model.folder import build_model
from xmodel2.model.generate import (continuation_text, cut_at_stop, default_add_bos, generate_ids,
                                    generate_many, stop_ids_for, stop_string_check)

from eval_fixtures import smollm2, smollm2_dir  # noqa: F401  (pytest fixtures)


def chaotic_model(dtype: torch.dtype = torch.float32):
    """A tiny model with large random weights: fresh initialisation only repeats the last token,
    which would hide a row reading another row's keys."""
    config = ModelConfig(vocab_size=300, hidden_size=64, intermediate_size=160, num_layers=2, num_heads=4,
                         num_kv_heads=2, bos_token_id=1, eos_token_id=2, mup={"dim_model_base": 32})
    model = build_model(config, seed=5).eval()
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for weight in model.parameters():
            weight.copy_(torch.randn(weight.shape, generator=generator) * 0.5)
    return model.to(dtype)


@pytest.fixture(scope="module")
def model():
    return chaotic_model()


def random_prompts(count: int, seed: int, vocab: int = 300) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(rng.randint(1, 40))] for _ in range(count)]


def alone(model, prompts, max_new_tokens, **options) -> list[list[int]]:
    return [generate_ids(model, [p], max_new_tokens, **options)[0] for p in prompts]


def test_greedy_rows_that_end_early_and_refills_match_one_at_a_time(model):
    prompts = random_prompts(11, seed=1)
    # One token in forty stops a row, so rows end at many different steps and waiting prompts
    # join a batch whose cache is longer or shorter than theirs.
    stops = set(range(10, 300, 40))
    expected = alone(model, prompts, 24, stop_ids=stops)
    lengths = {len(row) for row in expected}
    assert len(lengths) >= 4 and max(lengths) == 24, lengths
    for batch_size in (1, 4):
        assert generate_many(model, prompts, 24, batch_size=batch_size, stop_ids=stops) == expected


def test_should_stop_is_asked_per_prompt_and_ends_that_row_only(model):
    prompts = random_prompts(6, seed=2)
    asked = []

    def should_stop(row: int, new: list[int]) -> bool:
        asked.append(row)
        return len(new) == row + 1  # prompt i stops after i + 1 tokens

    rows = generate_many(model, prompts, 10, batch_size=4, should_stop=should_stop)
    assert [len(r) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows == [full[:i + 1] for i, full in enumerate(alone(model, prompts, 10))]
    assert sorted(set(asked)) == list(range(6))


def test_bf16_batched_greedy_matches_alone():
    bf16 = chaotic_model(torch.bfloat16)
    prompts = random_prompts(5, seed=3)
    # bf16 rounding may differ between batch shapes; the first tokens must agree row by row
    batched = generate_many(bf16, prompts, 4, batch_size=2)
    assert all(len(row) == 4 for row in batched)
    assert sum(b == a for b, a in zip(batched, alone(bf16, prompts, 4))) >= 4


def test_sampling_is_seeded_and_edge_cases(model):
    prompts = random_prompts(5, seed=4)
    first = generate_many(model, prompts, 8, batch_size=2, temperature=1.0, seed=7)
    assert first == generate_many(model, prompts, 8, batch_size=2, temperature=1.0, seed=7)
    assert first != generate_many(model, prompts, 8, batch_size=2, temperature=1.0, seed=8)
    assert generate_many(model, [], 8) == []
    assert generate_many(model, prompts, 0) == [[] for _ in prompts]
    with pytest.raises(UserError, match="at least one token"):
        generate_many(model, [[5], []], 4)
    with pytest.raises(UserError, match="batch size"):
        generate_many(model, prompts, 4, batch_size=0)


def test_smollm2_gsm8k_batched_greedy_matches_one_at_a_time(smollm2):  # noqa: F811
    model, tokenizer = smollm2
    task = load_task("gsm8k:sample").limited(3)
    # The last question of each prompt, without the few-shot examples: a 1,000-token prefill per
    # row would make this test take minutes and check nothing more.
    docs = [dataclasses.replace(d, prompt=d.prompt[d.prompt.rfind("Question:"):]) for d in task.docs]
    task = dataclasses.replace(task, docs=docs, max_new_tokens=24)
    batched = generate_answers(model, tokenizer, task, batch_size=2)  # the third joins later
    add_bos = default_add_bos(tokenizer)
    for result, doc in zip(batched, task.docs):
        ids = tokenizer.encode(doc.prompt, add_bos=add_bos)
        one = generate_ids(model, [ids], task.max_new_tokens, stop_ids=stop_ids_for(model, tokenizer),
                           should_stop=stop_string_check(tokenizer, task.stop))[0]
        assert result.text == cut_at_stop(continuation_text(tokenizer, ids, one), task.stop)
    assert sum(bool(r.text.strip()) for r in batched) >= 2
