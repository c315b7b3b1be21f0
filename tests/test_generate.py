"""Generation: KV-cache decoding equals full recomputation; sampling, stops, batches, CLI."""

import subprocess
import sys

import pytest
import torch

from xmodel2.cli import main
from xmodel2.model.config import ModelConfig
from xmodel2.model.folder import build_model, save_model_folder
from xmodel2.model.generate import cut_at_stop, generate, generate_ids, sample_next
from xmodel2.tokenizer import load_tokenizer

SPECIALS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
TEXT = ("The quick brown fox jumps over the lazy dog. A model reads text and writes text. "
        "Small models learn fast on a laptop; large models learn more. ") * 20


def small_config(**overrides) -> ModelConfig:
    values = dict(vocab_size=400, hidden_size=64, intermediate_size=160, num_layers=2, num_heads=4,
                  num_kv_heads=2, bos_token_id=1, eos_token_id=2, mup={"dim_model_base": 32})
    values.update(overrides)
    return ModelConfig(**values)


@pytest.fixture(scope="module")
def model():
    return build_model(small_config(), seed=11).eval()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, model):
    """A model folder with a real (freshly trained) byte-level BPE tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder = tmp_path_factory.mktemp("gen")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([TEXT], trainer)
    source = folder / "tok"
    source.mkdir()
    tokenizer.save(str(source / "tokenizer.json"))
    (source / "tokenizer_config.json").write_text(
        '{"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": true}')
    save_model_folder(model, folder / "model", tokenizer_dir=source)
    return folder / "model"


def greedy_by_recomputation(model, prompt: list[int], steps: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


PROMPTS = [[5, 17, 99], [1, 250, 33, 7, 64, 8, 120], [42, 3, 3, 9, 300]]


def test_kv_cache_greedy_equals_full_recomputation(model):
    for prompt in PROMPTS:
        assert generate_ids(model, [prompt], 16) == [greedy_by_recomputation(model, prompt, 16)]


def test_batched_left_padded_greedy_equals_each_prompt_alone(model):
    batched = generate_ids(model, PROMPTS, 16)
    assert batched == [greedy_by_recomputation(model, p, 16) for p in PROMPTS]


def test_bf16_decoding_runs_and_is_deterministic(model):
    bf16 = build_model(small_config(), seed=11, dtype=torch.bfloat16).eval()
    first = generate_ids(bf16, PROMPTS, 8)
    assert first == generate_ids(bf16, PROMPTS, 8)
    assert all(len(row) == 8 for row in first)


def test_eos_ends_a_row_and_is_not_returned(model):
    prompt = PROMPTS[0]
    greedy = greedy_by_recomputation(model, prompt, 16)
    stop = greedy[5]
    first = greedy.index(stop)
    assert generate_ids(model, [prompt], 16, stop_ids=[stop]) == [greedy[:first]]
    # other rows of the batch keep going
    rows = generate_ids(model, [prompt, PROMPTS[1]], 16, stop_ids=[stop])
    assert rows[0] == greedy[:first]


def test_sampling_is_seeded(model):
    a = generate_ids(model, PROMPTS, 12, temperature=1.0, seed=1)
    assert a == generate_ids(model, PROMPTS, 12, temperature=1.0, seed=1)
    assert a != generate_ids(model, PROMPTS, 12, temperature=1.0, seed=2)
    # top-k 1 and a tiny nucleus both leave only the argmax
    greedy = generate_ids(model, PROMPTS, 12)
    assert generate_ids(model, PROMPTS, 12, temperature=1.0, top_k=1, seed=3) == greedy
    assert generate_ids(model, PROMPTS, 12, temperature=1.0, top_p=1e-6, seed=3) == greedy


def test_top_k_and_top_p_restrict_the_candidates():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log().expand(4000, 4)
    gen = torch.Generator().manual_seed(0)
    assert set(sample_next(logits, 1.0, top_k=2, generator=gen).tolist()) == {0, 1}
    assert set(sample_next(logits, 1.0, top_p=0.7, generator=gen).tolist()) == {0, 1}
    assert set(sample_next(logits, 1.0, top_p=0.85, generator=gen).tolist()) == {0, 1, 2}
    everything = sample_next(logits, 1.0, generator=gen)
    assert set(everything.tolist()) == {0, 1, 2, 3}
    assert (everything == 0).float().mean().item() == pytest.approx(0.5, abs=0.03)
    # temperature sharpens: at 0.25 token 0 dominates far more than 50%
    cold = sample_next(logits, 0.25, generator=gen)
    assert (cold == 0).float().mean().item() > 0.85


def test_stop_strings_cut_the_text(model_dir):
    from xmodel2.model.folder import load_model_folder

    model = load_model_folder(model_dir)
    tokenizer = load_tokenizer(model_dir)
    full = generate(model, tokenizer, ["The quick"], 24)[0]
    assert len(full) > 6
    stop = full[3:6]
    cut = generate(model, tokenizer, ["The quick"], 24, stop=[stop])[0]
    assert cut == full[:full.index(stop)]
    assert cut_at_stop("abcXYdefXY", ["de", "XY"]) == "abc"


def test_generate_command_prints_the_greedy_continuation(model_dir, capsys):
    from xmodel2.model.folder import load_model_folder

    expected = generate(load_model_folder(model_dir), load_tokenizer(model_dir), ["A model"], 10)[0]
    assert main(["generate", str(model_dir), "--prompt", "A model", "--max-new-tokens", "10"]) == 0
    assert capsys.readouterr().out == expected + "\n"


def test_generate_command_rejects_bad_arguments(model_dir, tmp_path, capsys):
    assert main(["generate", str(tmp_path / "nope"), "--prompt", "x"]) == 2
    assert main(["generate", str(model_dir), "--prompt", "x", "--top-p", "1.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("xmodel2: error: ") for line in err)


def test_generate_subprocess_samples_with_a_seed(model_dir):
    command = [sys.executable, "-m", "xmodel2", "generate", str(model_dir), "--prompt", "Small",
               "--max-new-tokens", "8", "--temperature", "0.8", "--top-k", "50", "--top-p", "0.9",
               "--seed", "4", "--dtype", "bf16"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.stdout == first.stdout


def test_chat_subprocess_answers_each_line_until_exit(model_dir):
    run = subprocess.run([sys.executable, "-m", "xmodel2", "chat", str(model_dir), "--max-new-tokens", "6"],
                         input="hello there\nhow are you\n/exit\nnever read\n",
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert len(run.stdout.splitlines()) >= 2
    assert "<|im_end|>" not in run.stdout
