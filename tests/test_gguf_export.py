"""GGUF export: transformers' GGUF reader and `xmodel2 import` get our logits and our token ids back."""

import pytest
import torch

from eval_fixtures import smollm2_dir  # noqa: F401  (session fixture)
from xmodel2.cli import main
from xmodel2.model.config import ModelConfig
from xmodel2.model.folder import build_model, load_model_folder, save_model_folder
from xmodel2.tokenizer import load_tokenizer

transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")

# Largest logit error relative to the largest logit: float16 weights round at 2^-11, 8-bit
# blocks at about 1/254 of each block's largest weight.
TOLERANCE = {"f16": 2e-3, "q8_0": 2e-2}
TEXTS = ["hello world, hello model", "model 123 says: hello!", "<s>hello</s>"]


@pytest.fixture(scope="module")
def byte_level_tokenizer(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=280, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["hello world, hello model 123 says"] * 10, trainer)
    folder = tmp_path_factory.mktemp("bpe")
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text('{"bos_token": "<s>", "eos_token": "</s>"}')
    return folder


@pytest.fixture(scope="module")
def tied_mup_dir(tmp_path_factory, byte_level_tokenizer):
    """A tied μP model (so the export must untie it) whose embedding has rows beyond the tokenizer."""
    config = ModelConfig(vocab_size=300, hidden_size=64, intermediate_size=160, num_layers=2, num_heads=4,
                         num_kv_heads=2, bos_token_id=0, eos_token_id=1, mup={"dim_model_base": 16})
    assert config.tie_embeddings and config.mup.enabled
    folder = tmp_path_factory.mktemp("tied") / "model"
    return save_model_folder(build_model(config, seed=3).eval(), folder, tokenizer_dir=byte_level_tokenizer)


def export(model_dir, out, dtype):
    assert main(["export", str(model_dir), "--format", "gguf", "--dtype", dtype, "--out", str(out)]) == 0
    return out


def hf_from_gguf(path):
    model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model.eval(), tokenizer


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours - theirs).abs().max() / ours.abs().max()).item()


@pytest.mark.parametrize("dtype", ["f16", "q8_0"])
def test_tied_mup_model_round_trips_through_transformers_and_import(tmp_path, tied_mup_dir, dtype):
    path = export(tied_mup_dir, tmp_path / "m.gguf", dtype)
    ours = load_model_folder(tied_mup_dir).eval()
    hf, hf_tokenizer = hf_from_gguf(path)
    ids = torch.randint(0, 300, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ours(ids)
        assert relative_error(expected, hf(ids).logits) <= TOLERANCE[dtype]
        # and a worse format is measurably worse: the tolerance is not so loose that anything passes
        if dtype == "q8_0":
            assert relative_error(expected, hf(ids).logits) > 1e-4
    tokenizer = load_tokenizer(tied_mup_dir)
    for text in TEXTS:
        assert hf_tokenizer(text, add_special_tokens=False)["input_ids"] == tokenizer.encode(text), text

    assert main(["import", str(path), "--out", str(tmp_path / "back")]) == 0
    back = load_model_folder(tmp_path / "back").eval()
    with torch.no_grad():
        assert relative_error(expected, back(ids)) <= TOLERANCE[dtype]
    back_tokenizer = load_tokenizer(tmp_path / "back")
    assert [back_tokenizer.encode(t) for t in TEXTS] == [tokenizer.encode(t) for t in TEXTS]


def test_sentencepiece_unigram_tokenizer_segments_as_sentencepiece(tmp_path):
    """Our trained tokenizers are SentencePiece unigram with user-defined digits and punctuation."""
    from xmodel2.data.corpus import corpus_file
    from xmodel2.interop.gguf_export import export_gguf
    from xmodel2.tokenizer.train import MIN_LEARNED_PIECES, RESERVED_PIECES, train_tokenizer

    train_tokenizer([corpus_file("math")], tmp_path / "tok", vocab_size=RESERVED_PIECES + MIN_LEARNED_PIECES + 200,
                    max_sentences=3000)
    tokenizer = load_tokenizer(tmp_path / "tok")
    config = ModelConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, intermediate_size=160, num_layers=1,
                         num_heads=4, num_kv_heads=2, mup={"dim_model_base": 32})
    save_model_folder(build_model(config, seed=1).eval(), tmp_path / "m", tokenizer_dir=tmp_path / "tok")
    export_gguf(tmp_path / "m", tmp_path / "m.gguf")
    _, hf_tokenizer = hf_from_gguf(tmp_path / "m.gguf")
    # Single spaces and characters in the vocabulary: transformers' unigram reader collapses runs
    # of spaces (llama.cpp does not) and neither has SentencePiece's byte fallback.
    for text in ["The sum of 12.5 and 7 is 19.5, so x = 3 ~ 4? yes.",
                 "<|im_start|>user what is 2 + 2?<|im_end|>",
                 "Find the value of the expression when it is divided by 4!"]:
        assert hf_tokenizer(text, add_special_tokens=False)["input_ids"] == tokenizer.encode(text), text


def test_imported_smollm2_round_trips(tmp_path, smollm2_dir):  # noqa: F811
    path = export(smollm2_dir, tmp_path / "smol.gguf", "f16")
    ours = load_model_folder(smollm2_dir).eval()
    hf, hf_tokenizer = hf_from_gguf(path)
    tokenizer = load_tokenizer(smollm2_dir)
    text = "The capital of France is Paris. 1 + 1 = 2, and\nnew lines stay."
    ids = tokenizer.encode(text)
    assert hf_tokenizer(text, add_special_tokens=False)["input_ids"] == ids
    with torch.no_grad():
        batch = torch.tensor([ids])
        assert relative_error(ours(batch), hf(batch).logits) <= TOLERANCE["f16"]


def test_bad_gguf_exports_are_one_line(tmp_path, tied_mup_dir, capsys):
    assert main(["export", str(tied_mup_dir), "--format", "gguf", "--out", str(tmp_path / "m.bin")]) == 2
    assert "ends in .gguf" in capsys.readouterr().err
    assert main(["export", str(tied_mup_dir), "--format", "llama", "--dtype", "q8_0",
                 "--out", str(tmp_path / "x")]) == 2
    assert "--format gguf" in capsys.readouterr().err
    assert not (tmp_path / "m.bin").exists() and not (tmp_path / "x").exists()
