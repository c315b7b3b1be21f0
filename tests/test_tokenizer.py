"""Tokenizer: the released vocabulary, training, the Hugging Face backend, chat and the CLI."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import sentencepiece as spm

from xmodel2.cli import main
from xmodel2.errors import UserError
from xmodel2.tokenizer import load_tokenizer
from xmodel2.tokenizer.chat import CHAT_TEMPLATE
from xmodel2.tokenizer.symbols import RESERVED_PIECES, USER_SYMBOLS
from xmodel2.tokenizer.corpus import sentences
from xmodel2.tokenizer.train import character_coverage, train_tokenizer

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "xmodel2-tokenizer"
RELEASED = REFERENCE / "tokenizer.model"
needs_release = pytest.mark.skipif(not RELEASED.is_file(), reason=f"released tokenizer absent ({RELEASED})")

VARIED = [
    "The quick brown fox jumps over the lazy dog.",
    "In 2024, Xmodel-2 scored 55.88 on GSM8K and 29.88 on HumanEval (pass@1).",
    "def fib(n: int) -> int:\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "大型语言模型的推理能力，在数学和代码任务上尤为重要。",
    "emoji 🙂🚀 and accents: naïve café, Zürich",
    "<|im_start|>user\nWhat is 7*6?<|im_end|>\n<|im_start|>assistant\n42<|im_end|>\n",
    "  leading spaces,\t\ttabs,   runs   of   spaces   \n\n\nand trailing   ",
    "",
    "０１２３ full-width digits, ｀weird｀ \\n literal backslash-n",
]
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Add 2 and 40."},
        {"role": "assistant", "content": "42"}]


def stdlib_text(limit_chars: int) -> str:
    """Real text: the installed Python standard library's source (code, comments, docstrings)."""
    parts, size = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        size += len(text)
        if size >= limit_chars:
            break
    return "".join(parts)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "stdlib.txt"
    path.write_text(stdlib_text(400_000), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory) -> Path:
    return train_tokenizer([corpus], tmp_path_factory.mktemp("tok") / "tokenizer", vocab_size=2000)


# --- the released vocabulary ---

@needs_release
def test_user_symbols_are_the_released_ones():
    sp = spm.SentencePieceProcessor(model_file=str(RELEASED))
    assert [sp.id_to_piece(i) for i in range(3, 106)] == list(USER_SYMBOLS)
    assert sp.id_to_piece(106) == "<0x00>" and sp.id_to_piece(RESERVED_PIECES - 1) == "<0xFF>"


@needs_release
def test_released_vocab_equals_sentencepiece():
    sp = spm.SentencePieceProcessor(model_file=str(RELEASED))
    tok = load_tokenizer(REFERENCE)
    assert (tok.vocab_size, tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (65280, 0, 1, 2, None)
    assert (tok.token_to_id("<|im_start|>"), tok.im_end_id) == (67, 68)
    assert tok.stop_ids == [2, 68]
    assert tok.encode_batch(VARIED) == sp.encode(VARIED)
    for text in VARIED:
        assert tok.encode(text) == sp.encode(text)
        assert tok.encode(text, add_bos=True, add_eos=True) == [1] + sp.encode(text) + [2]
        assert tok.decode(sp.encode(text)) == sp.decode(sp.encode(text))
    assert tok.encode("12345") == sp.encode("12345") and len(tok.encode("12345")) == 6  # ▁ + 5 digits
    assert tok.token_to_id("no such piece") is None and tok.id_to_token(67) == "<|im_start|>"
    import hashlib
    assert tok.fingerprint == hashlib.sha256(RELEASED.read_bytes()).hexdigest()


@needs_release
def test_released_chat_markers_are_single_ids():
    tok = load_tokenizer(RELEASED)
    ids = tok.encode_chat(CHAT, add_generation_prompt=True)
    assert ids.count(67) == 4 and ids.count(68) == 3
    assert tok.decode(ids) == tok.apply_chat_template(CHAT, add_generation_prompt=True)


# --- training ---

def test_trained_tokenizer_has_released_layout(trained):
    assert sorted(p.name for p in trained.iterdir() if p.name != ".xmodel2") == ["tokenizer.model", "tokenizer_config.json"]
    tok = load_tokenizer(trained)
    assert tok.vocab_size == 2000
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, None)
    assert [tok.id_to_token(i) for i in range(3, 106)] == list(USER_SYMBOLS)
    assert (tok.token_to_id("<|im_start|>"), tok.im_end_id) == (67, 68)
    assert [tok.id_to_token(i) for i in (106, 361)] == ["<0x00>", "<0xFF>"]
    config = json.loads((trained / "tokenizer_config.json").read_text())
    assert (config["bos_token"], config["eos_token"], config["unk_token"]) == ("<s>", "</s>", "<unk>")
    assert config["chat_template"] == CHAT_TEMPLATE


SPEC_FIELDS = ("model_type", "byte_fallback", "split_digits", "split_by_unicode_script", "split_by_number",
               "split_by_whitespace", "max_sentencepiece_length", "unk_id", "bos_id", "eos_id", "pad_id",
               "treat_whitespace_as_suffix", "allow_whitespace_only_pieces")


def _proto(path: Path):
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(path.read_bytes())
    return proto


def test_trained_tokenizer_records_released_settings(trained):
    proto = _proto(trained / "tokenizer.model")
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    assert (spec.model_type, spec.byte_fallback, spec.split_digits, spec.pad_id) == (1, True, True, -1)  # 1 = UNIGRAM
    assert (norm.name, norm.add_dummy_prefix, norm.remove_extra_whitespaces) == ("identity", True, False)
    assert list(spec.user_defined_symbols) == list(USER_SYMBOLS)
    if RELEASED.is_file():
        released = _proto(RELEASED)
        assert [getattr(spec, f) for f in SPEC_FIELDS] == [getattr(released.trainer_spec, f) for f in SPEC_FIELDS]
        fields = ("name", "precompiled_charsmap", "add_dummy_prefix", "remove_extra_whitespaces",
                  "escape_whitespaces")
        assert [getattr(norm, f) for f in fields] == [getattr(released.normalizer_spec, f) for f in fields]


def test_trained_tokenizer_splits_digits_and_falls_back_to_bytes(trained):
    tok = load_tokenizer(trained)
    digits = [tok.id_to_token(i) for i in tok.encode("x = 1234567890")]
    assert digits[-10:] == list("1234567890")
    unseen = "ꙮ"  # U+A66E, absent from the training text
    pieces = [tok.id_to_token(i) for i in tok.encode(unseen)]
    assert pieces[-3:] == [f"<0x{b:02X}>" for b in unseen.encode("utf-8")]
    for text in VARIED:
        assert tok.decode(tok.encode(text)) == text


def test_training_is_deterministic_and_learns_the_text(corpus, trained, tmp_path):
    again = train_tokenizer([corpus], tmp_path / "again", vocab_size=2000)
    assert (again / "tokenizer.model").read_bytes() == (trained / "tokenizer.model").read_bytes()
    tok = load_tokenizer(trained)
    # learned pieces compress the text it was trained on well beyond bytes (about 2 chars/token)
    text = stdlib_text(50_000)
    assert len(tok.encode(text)) < len(text.encode("utf-8")) / 2.5


def test_training_reads_jsonl_gz_folders(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    records = [{"body": para} for para in stdlib_text(200_000).split("\n\n")]
    with gzip.open(folder / "part.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in records)
    out = train_tokenizer([folder], tmp_path / "tok", vocab_size=1000, jsonl_field="body", max_sentences=3000)
    assert load_tokenizer(out).vocab_size == 1000
    with pytest.raises(UserError, match=r"part\.jsonl\.gz:1: no field 'text'"):
        train_tokenizer([folder], tmp_path / "bad", vocab_size=1000)
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("setup, message", [
    (lambda d: [d / "missing.txt"], "not found"),
    (lambda d: [_write(d / "empty.txt", "\n  \n")], "no text found"),
    (lambda d: [_write(d / "bad.jsonl", '{"text": "ok"}\n{oops\n')], r"bad\.jsonl:2: invalid JSON"),
    (lambda d: [_write(d / "bin.txt", b"\xff\xfe\x00abc")], r"bin\.txt: not UTF-8"),
])
def test_training_rejects_bad_inputs(tmp_path, setup, message):
    with pytest.raises(UserError, match=message):
        train_tokenizer(setup(tmp_path), tmp_path / "out", vocab_size=1000)
    assert not (tmp_path / "out").exists()


def test_small_vocab_trains_on_text_with_many_distinct_characters(tmp_path):
    """Over a thousand emoji at the released coverage would each need a piece: more than fit in 1,000."""
    import importlib.util

    spec = importlib.util.find_spec("pip")
    if spec is None:
        pytest.skip("pip is not installed (its emoji table is the test text)")
    emoji_table = Path(spec.origin).parent / "_vendor" / "rich" / "_emoji_codes.py"
    if not emoji_table.is_file():
        pytest.skip(f"{emoji_table} absent")
    assert character_coverage(list(sentences([emoji_table])), 1000) < 0.9999
    tok = load_tokenizer(train_tokenizer([emoji_table], tmp_path / "tok", vocab_size=1000))
    assert tok.vocab_size == 1000
    text = '"thumbs_up": "👍", "rocket": "🚀"'
    assert tok.decode(tok.encode(text)) == text


def test_training_rejects_tiny_vocab(corpus, tmp_path):
    with pytest.raises(UserError, match="too small.*at least"):
        train_tokenizer([corpus], tmp_path / "out", vocab_size=400)


def _write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


# --- Hugging Face tokenizer.json ---

@pytest.fixture(scope="module")
def hf_folder(corpus, tmp_path_factory) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([str(corpus)], trainer)
    folder = tmp_path_factory.mktemp("hf")
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|endoftext|>", "eos_token": {"content": "<|im_end|>"}, "pad_token": None}))
    (folder / "special_tokens_map.json").write_text(json.dumps({"eos_token": "<|endoftext|>",
                                                                "unk_token": "<|endoftext|>"}))
    return folder


def test_hf_backend_equals_tokenizers(hf_folder):
    from tokenizers import Tokenizer as HF

    reference = HF.from_file(str(hf_folder / "tokenizer.json"))
    tok = load_tokenizer(hf_folder)
    assert tok.kind == "huggingface" and tok.vocab_size == reference.get_vocab_size()
    # tokenizer_config.json wins over special_tokens_map.json; the map fills what the config lacks
    assert (tok.bos_id, tok.eos_id, tok.unk_id, tok.pad_id) == (0, 2, 0, None)
    expected = [e.ids for e in reference.encode_batch(VARIED, add_special_tokens=False)]
    assert tok.encode_batch(VARIED) == expected
    assert [tok.encode(t) for t in VARIED] == expected
    for text in VARIED:
        assert tok.decode(tok.encode(text)) == text
    ids = tok.encode_chat(CHAT, add_generation_prompt=True)
    assert ids.count(1) == 4 and ids.count(2) == 3 and tok.stop_ids == [2]
    assert tok.encode("hi", add_bos=True, add_eos=True) == [0] + reference.encode("hi").ids + [2]


def test_save_copies_files_and_reloads(hf_folder, trained, tmp_path):
    for source in (hf_folder / "tokenizer.json", trained):
        tok = load_tokenizer(source)
        out = tok.save(tmp_path / tok.kind)
        copy = load_tokenizer(out)
        assert copy.fingerprint == tok.fingerprint
        assert sorted(p.name for p in copy.files) == sorted(p.name for p in tok.files)
        assert copy.encode(VARIED[2]) == tok.encode(VARIED[2])


@pytest.mark.parametrize("name, content, message", [
    ("tokenizer.model", b"\x00\x01 random bytes \xff" * 10, "not a SentencePiece model"),
    ("tokenizer.json", b'{"hello": "world"}', "not a Hugging Face tokenizer.json"),
    ("tokenizer.json", b"\xff\xfe", "not a Hugging Face tokenizer.json"),
])
def test_wrong_files_are_user_errors(tmp_path, name, content, message):
    path = _write(tmp_path / name, content)
    with pytest.raises(UserError, match=message) as info:
        load_tokenizer(path)
    assert str(path) in str(info.value)


def test_missing_tokenizers_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="neither tokenizer.model nor tokenizer.json"):
        load_tokenizer(tmp_path)
    with pytest.raises(UserError, match="tokenizer not found"):
        load_tokenizer(tmp_path / "absent.model")


# --- chat ---

def test_chat_template(trained):
    tok = load_tokenizer(trained)
    text = tok.apply_chat_template(CHAT, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nAdd 2 and 40.<|im_end|>\n"
                    "<|im_start|>assistant\n42<|im_end|>\n<|im_start|>assistant\n")
    assert tok.apply_chat_template(CHAT[:2]).endswith("<|im_end|>\n")
    ids = tok.encode_chat(CHAT)
    assert ids.count(67) == 3 and ids.count(68) == 3
    with pytest.raises(UserError, match="message 1: unknown role 'robot'"):
        tok.apply_chat_template([CHAT[0], {"role": "robot", "content": "beep"}])
    jinja2 = pytest.importorskip("jinja2")
    for prompt in (False, True):
        rendered = jinja2.Template(CHAT_TEMPLATE).render(messages=CHAT, add_generation_prompt=prompt)
        assert rendered == tok.apply_chat_template(CHAT, add_generation_prompt=prompt)


# --- command line ---

@needs_release
def test_cli_encode_equals_sentencepiece(capsys):
    sp = spm.SentencePieceProcessor(model_file=str(RELEASED))
    text = VARIED[1]
    assert main(["tokenizer", "encode", "--tokenizer", str(RELEASED), text]) == 0
    assert capsys.readouterr().out.split() == [str(i) for i in sp.encode(text)]
    result = subprocess.run([sys.executable, "-m", "xmodel2", "tokenizer", "encode", "--tokenizer",
                             str(REFERENCE), VARIED[3]], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == " ".join(map(str, sp.encode(VARIED[3])))


def test_cli_train_encode_decode(corpus, tmp_path, capsys):
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--input", str(corpus), "--out", str(out), "--vocab-size", "1000",
                 "--max-sentences", "4000"]) == 0
    assert "1,000 pieces" in capsys.readouterr().out
    assert main(["tokenizer", "encode", "--tokenizer", str(out), "--bos", "for x in range(10):"]) == 0
    ids = capsys.readouterr().out.split()
    assert ids[0] == "1" and len(ids) > 3
    assert main(["tokenizer", "decode", "--tokenizer", str(out), *ids]) == 0
    assert capsys.readouterr().out == "for x in range(10):\n"


def test_cli_bad_inputs_exit_2_with_one_line(tmp_path):
    bogus = _write(tmp_path / "tokenizer.model", b"not a model at all")
    for args in (["encode", "--tokenizer", str(bogus), "hi"],
                 ["train", "--input", str(tmp_path / "missing"), "--out", str(tmp_path / "o"),
                  "--vocab-size", "1000"]):
        result = subprocess.run([sys.executable, "-m", "xmodel2", "tokenizer", *args],
                                capture_output=True, text=True)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("xmodel2: error: ") and str(tmp_path) in lines[0]
