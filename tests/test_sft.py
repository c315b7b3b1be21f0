"""SFT data: readers for chat (OpenAI, ShareGPT) and instruction JSONL, ChatML rendering, errors
with FILE:LINE, the held-out split, prompt masking on real token streams, the bundled set, and
decay-stage mixtures built from them."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from xmodel2.cli import main
from xmodel2.data.corpus import corpus_file
from xmodel2.ratio_search.decay_mixture import add_sft_sources, decay_mixture, mixture_fragment, with_decay_mixture
from xmodel2.data.sft import (CATEGORIES, SFTCounts, SFTFile, bundled_sft_files, held_out_bucket,
                              parse_sft_file_spec, prepare_sft, read_sft_file)
from xmodel2.data.sft_mask import assistant_mask, masked_targets
from xmodel2.errors import UserError
from xmodel2.train.runconfig import load_run_config

OPENAI = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2 + 2?"},
                       {"role": "assistant", "content": "4"}]}
SHAREGPT = {"conversations": [{"from": "human", "value": "Capital of France?"}, {"from": "gpt", "value": "Paris."}]}
INSTRUCTION = {"instruction": "Add the numbers.", "input": "3 and 5", "output": "8"}


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def read_all(path: Path, strict: bool = False) -> tuple[list[list[dict]], SFTCounts]:
    counts = SFTCounts(str(path), "math")
    return list(read_sft_file(SFTFile(path, "math"), counts, strict)), counts


def test_three_formats_become_the_same_chatml_messages(tmp_path):
    path = write_lines(tmp_path / "mixed.jsonl", [json.dumps(r) for r in (OPENAI, SHAREGPT, INSTRUCTION)])
    conversations, counts = read_all(path)
    assert counts.conversations == 3 and not counts.errors
    assert conversations[1] == [{"role": "user", "content": "Capital of France?"},
                                {"role": "assistant", "content": "Paris."}]
    assert conversations[2] == [{"role": "user", "content": "Add the numbers.\n\n3 and 5"},
                                {"role": "assistant", "content": "8"}]
    prepared = prepare_sft([SFTFile(path, "math")], tmp_path / "out", held_out_percent=0)
    texts = [json.loads(line)["text"] for line in prepared.train_files["math"].read_text().splitlines()]
    assert texts[0] == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2 + 2?<|im_end|>\n"
                        "<|im_start|>assistant\n4<|im_end|>\n")


BAD_LINES = [
    (json.dumps(OPENAI), None),
    ('{"messages": [{"role": "user", "content": "hi"}', "bad_json"),
    (json.dumps({"messages": []}), "empty_messages"),
    (json.dumps({"messages": [{"content": "no role"}, {"role": "assistant", "content": "x"}]}), "missing_role"),
    (json.dumps({"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]}), "unknown_role"),
    (json.dumps({"messages": [{"role": "user", "content": "only a question"}]}), "no_assistant"),
    (json.dumps({"conversations": [{"from": "human", "value": ""}, {"from": "gpt", "value": "y"}]}), "empty_content"),
    (json.dumps({"instruction": "do it"}), "missing_content"),
    ("", "blank_line"),
    (json.dumps(["not", "an", "object"]), "not_an_object"),
    (json.dumps({"text": "pretraining text"}), "unknown_format"),
]


def test_every_bad_line_is_counted_with_file_and_line(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [line for line, _ in BAD_LINES])
    conversations, counts = read_all(path)
    assert len(conversations) == 1
    expected = [kind for _, kind in BAD_LINES if kind]
    assert sum(counts.errors.values()) == len(expected)
    assert sorted(counts.errors.elements()) == sorted(expected)
    for number, (line, kind) in enumerate(BAD_LINES, start=1):
        if kind:
            assert any(e.startswith(f"{path}:{number}: ") for e in counts.error_lines), kind
    assert "unknown role 'wizard'" in "\n".join(counts.error_lines)
    # prepare_sft keeps the counts in its report, so nothing disappears silently
    prepared = prepare_sft([SFTFile(path, "math")], tmp_path / "out", held_out_percent=0)
    assert prepared.errors == len(expected)
    assert "bad lines" in prepared.summary() and f"{path}:2:" in prepared.summary()


@pytest.mark.parametrize("number", [2, 3, 4, 5])
def test_strict_mode_raises_on_the_first_bad_line(tmp_path, number):
    path = write_lines(tmp_path / "bad.jsonl", [BAD_LINES[0][0], BAD_LINES[number - 1][0]])
    with pytest.raises(UserError, match=rf"^{path}:2: "):
        read_all(path, strict=True)


def test_file_specs_and_unknown_category(tmp_path):
    assert parse_sft_file_spec("code=a/b.jsonl") == SFTFile(Path("a/b.jsonl"), "code")
    with pytest.raises(UserError, match="unknown SFT category 'poetry'"):
        parse_sft_file_spec("poetry=x.jsonl")
    with pytest.raises(UserError, match="CATEGORY=PATH"):
        parse_sft_file_spec("x.jsonl")


def test_held_out_split_is_a_fixed_rule_on_the_prompt(tmp_path):
    a = [{"role": "user", "content": "What is  2+2?"}, {"role": "assistant", "content": "4"}]
    b = [{"role": "system", "content": "other"}, {"role": "user", "content": "what is 2+2?"},
         {"role": "assistant", "content": "four"}]
    assert held_out_bucket(a) == held_out_bucket(b)  # same prompt, same split
    buckets = [held_out_bucket([{"role": "user", "content": f"question {i}"}]) for i in range(2000)]
    assert 60 <= sum(b < 5 for b in buckets) <= 140  # about 5%


def test_bundled_set_reads_cleanly_in_five_categories_and_splits(tmp_path):
    files = bundled_sft_files()
    assert {f.category for f in files} == set(CATEGORIES)
    assert sum(f.path.stat().st_size for f in files) < 3_000_000
    prepared = prepare_sft(files, tmp_path / "sft")
    assert prepared.errors == 0
    assert set(prepared.train_files) == set(CATEGORIES)
    validation = [json.loads(line) for line in prepared.validation_file.read_text().splitlines()]
    train_texts = {json.loads(line)["text"] for p in prepared.train_files.values() for line in p.read_text().splitlines()}
    assert 200 < len(validation) < 800
    assert not train_texts & {v["text"] for v in validation}
    again = prepare_sft(files, tmp_path / "sft")  # reused, not rewritten
    assert again.validation_file.stat().st_mtime_ns == prepared.validation_file.stat().st_mtime_ns
    manifest = json.loads((files[0].path.parent / "manifest.json").read_text())
    generated = {name for name, entry in manifest["files"].items() if entry["generated"]}
    assert generated == {"math-arithmetic.jsonl.gz", "logic-generated.jsonl.gz"}


def test_bundled_champ_half_is_disjoint_from_its_corpus_half():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from build_sft import champ_part

    with gzip.open(bundled_sft_files()[0].path.parent / "math-champ.jsonl.gz", "rt") as handle:
        sources = [json.loads(line)["source"] for line in handle]
    assert sources and all(champ_part(s.split(":", 1)[1]) == "sft" for s in sources)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from xmodel2.tokenizer import load_tokenizer
    from xmodel2.tokenizer.train import train_tokenizer

    root = tmp_path_factory.mktemp("tok")
    with gzip.open(corpus_file("wiki-train"), "rt", encoding="utf-8") as handle:
        (root / "wiki.jsonl").write_text("".join(line for _, line in zip(range(200), handle)), encoding="utf-8")
    train_tokenizer([root / "wiki.jsonl"], root / "tok", vocab_size=700, max_sentences=5000)
    return load_tokenizer(root / "tok")


def test_prompt_mask_covers_exactly_the_assistant_replies(tokenizer):
    turns = [OPENAI["messages"], [{"role": "user", "content": "Name a colour."},
                                  {"role": "assistant", "content": "Blue, like the sky.\nOr red."},
                                  {"role": "user", "content": "Another?"},
                                  {"role": "assistant", "content": "Green."}]]
    ids = []
    for messages in turns:
        ids += tokenizer.encode(tokenizer.apply_chat_template(messages), add_eos=True)
    tokens = np.array(ids)
    mask = assistant_mask(tokens, tokenizer)
    kept = tokenizer.decode(tokens[mask].tolist())
    assert kept.replace("<|im_end|>", "|") == "4|Blue, like the sky.\nOr red.|Green.|"
    window = np.stack([tokens[:17], tokens[16:33]])
    targets = masked_targets(window, np.stack([mask[:17], mask[16:33]]))
    assert targets.shape == (2, 16)
    assert ((targets == -100) == ~np.stack([mask[1:17], mask[17:33]])).all()


def test_decay_mixture_scales_pretraining_and_spreads_sft(tmp_path):
    run = load_run_config(None, [])
    prepared = prepare_sft(bundled_sft_files(), tmp_path / "sft")
    run = add_sft_sources(run, prepared)
    assert run.data.sources["sft-validation"].held_out
    mixture = decay_mixture(run, 0.64, {"math": 2, "logic": 1, "code": 1})
    assert sum(mixture.values()) == pytest.approx(1.0)
    assert mixture["sft-math"] == pytest.approx(0.32) and mixture["sft-logic"] == pytest.approx(0.16)
    assert "sft-knowledge" not in mixture
    base = run.stages[1].mixture
    assert mixture["wiki-train"] == pytest.approx(0.36 * base["wiki-train"] / sum(base.values()))
    assert decay_mixture(run, 0.0, {"math": 1}) == pytest.approx({k: v / sum(base.values()) for k, v in base.items()})
    with pytest.raises(UserError, match="unknown categories poetry"):
        decay_mixture(run, 0.5, {"poetry": 1})
    with pytest.raises(UserError, match="sft_share"):
        decay_mixture(run, 1.5, {"math": 1})
    decayed = with_decay_mixture(run, 0.64, {c: 1 for c in CATEGORIES})
    assert decayed.stages[1].decay.shape == "exponential"
    fragment = mixture_fragment(decayed)
    assert fragment["stages"][1]["mixture"]["sft-math"] == pytest.approx(0.64 / 5, abs=1e-6)
    assert set(fragment["data"]["sources"]) == {f"sft-{c}" for c in CATEGORIES} | {"sft-validation"}
    assert fragment["data"]["sources"]["sft-validation"]["held_out"]


def test_sft_data_prepares_into_shards_with_the_normal_prepare(tmp_path, tokenizer):
    from xmodel2.data.mixture import SequentialDataset

    path = write_lines(tmp_path / "chat.jsonl", [json.dumps(OPENAI), json.dumps(SHAREGPT)] * 20)
    prepared = prepare_sft([SFTFile(path, "knowledge")], tmp_path / "sft", held_out_percent=0)
    assert main(["prepare", str(prepared.train_files["knowledge"]), "--tokenizer", str(tokenizer.path),
                 "--out", str(tmp_path / "shard")]) == 0
    data = SequentialDataset(str(tmp_path / "shard"), 16)
    assert tokenizer.im_start_id in data.sequences([0])[0].tolist()

