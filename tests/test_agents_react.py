"""The ReAct loop: turn handling with a scripted policy, the prefix-cached completer against plain
generation, a full `xmodel2 eval --tasks hotpotqa_react,fever_react` run on a randomly initialised
tiny model with a tokenizer trained here (real code path, meaningless scores), CLI errors, and a
slow end-to-end run on SmolLM2 over ReAct's own data."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from eval_fixtures import smollm2_dir  # noqa: F401  (session fixture)
from agent_fixtures import store_file  # noqa: F401  (module fixture)
from xmodel2.agents.docstore import load_docstore
from xmodel2.agents.llm import ModelCompleter
from xmodel2.agents.metrics import exact_match
from xmodel2.agents.react import run_episode
from xmodel2.agents.wikienv import WikiEnv
from xmodel2.cli import main
from xmodel2.model.config import ModelConfig
from xmodel2.model.folder import build_model, save_model_folder
from xmodel2.model.generate import generate
from xmodel2.tokenizer import load_tokenizer

REACT_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "react"

# Our own few-shot examples in the layout of ReAct's files (the product reads the real ones).
HOTPOT_SHOT = """
Question: Who was the 16th president of the United States?
Thought 1: I need to search Abraham Lincoln and check whether he was the 16th president.
Action 1: Search[Abraham Lincoln]
Observation 1: Abraham Lincoln was the 16th president of the United States, serving from 1861 until his assassination in 1865.
Thought 2: He was the 16th president, so the answer is Abraham Lincoln.
Action 2: Finish[Abraham Lincoln]
"""
FEVER_SHOT = """Decide whether an Observation SUPPORTS or REFUTES a Claim, or whether there is NOT ENOUGH INFO.
Claim: Ada Lovelace was a mathematician.
Thought 1: I should search Ada Lovelace and see whether she was a mathematician.
Action 1: Search[Ada Lovelace]
Observation 1: Augusta Ada King, Countess of Lovelace, also known as Ada Lovelace, was an English mathematician and writer.
Thought 2: The observation says she was a mathematician.
Action 2: Finish[SUPPORTS]

"""


@pytest.fixture(scope="module")
def react_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("react-data")
    (folder / "prompts_naive.json").write_text(json.dumps({"webthink_simple6": HOTPOT_SHOT}))
    (folder / "fever.json").write_text(json.dumps({"webthink_simple3": FEVER_SHOT}))
    questions = [{"question": "Who wrote about the analytical engine?", "answer": "Ada Lovelace", "type": "bridge"},
                 {"question": "Which animal is an aardvark?", "answer": "mammal", "type": "bridge"},
                 {"question": "Is ABBA a band?", "answer": "yes", "type": "comparison"}]
    (folder / "hotpot_dev_v1_simplified.json").write_text(json.dumps(questions))
    claims = [{"claim": "Abraham Lincoln was a president.", "label": "SUPPORTS"},
              {"claim": "ABBA is a Norwegian band.", "label": "REFUTES"},
              {"claim": "Aardvarks like music.", "label": "NOT ENOUGH INFO"}]
    (folder / "paper_dev.jsonl").write_text("".join(json.dumps(c) + "\n" for c in claims))
    return folder


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, store_file) -> Path:
    """A randomly initialised tiny model with a Unigram tokenizer trained here on the store slice."""
    from xmodel2.tokenizer.train import MIN_LEARNED_PIECES, RESERVED_PIECES, train_tokenizer

    folder = tmp_path_factory.mktemp("tiny")
    train_tokenizer([store_file], folder / "tok", vocab_size=RESERVED_PIECES + MIN_LEARNED_PIECES + 200)
    vocab = load_tokenizer(folder / "tok").vocab_size
    config = ModelConfig(vocab_size=vocab, hidden_size=64, intermediate_size=160, num_layers=2, num_heads=4,
                         num_kv_heads=2, bos_token_id=1, eos_token_id=2, max_position_embeddings=4096,
                         mup={"dim_model_base": 32})
    return save_model_folder(build_model(config, seed=5).eval(), folder / "model", tokenizer_dir=folder / "tok")


class Scripted:
    """A policy that answers from a list and records what it was asked: drives the loop exactly."""

    def __init__(self, replies):
        self.replies, self.calls = list(replies), []

    def complete(self, prompt, stop):
        self.calls.append((prompt, list(stop)))
        return self.replies.pop(0)


def test_loop_counts_format_errors_and_invalid_actions(store_file):
    env = WikiEnv(load_docstore([store_file]), reward=exact_match)
    policy = Scripted([" I need Ada.\nAction 1: Search[Ada Lovelace]",
                       " Look up first.",  # no action line: a format error, then the action is asked alone
                       " Lookup[first]",
                       " Jump.\nAction 3: Jump[high]",
                       " Done.\nAction 4: Finish[Ada Lovelace]\nThought 5: ignored"])
    trajectory = run_episode(policy, env, "PROMPT\n", "Who?", gold="Ada Lovelace")
    assert [t.action for t in trajectory.turns] == ["Search[Ada Lovelace]", "Lookup[first]", "Jump[high]",
                                                    "Finish[Ada Lovelace]"]
    assert trajectory.turns[1].thought == "Look up first."
    assert trajectory.turns[1].observation.startswith("(Result 1 / 2) She was the first")
    assert trajectory.turns[2].observation == "Invalid action: Jump[high]"
    assert trajectory.turns[3].observation == "Episode finished, reward = 1"
    assert (trajectory.answer, trajectory.reward, trajectory.format_errors, trajectory.invalid_actions) == (
        "Ada Lovelace", 1.0, 1, 1)
    assert not trajectory.step_limit and not trajectory.context_full
    assert policy.calls[0] == ("PROMPT\nQuestion: Who?\nThought 1:", ["\nObservation"])
    assert policy.calls[2][0].endswith("Observation 1: " + trajectory.turns[0].observation +
                                       "\nThought 2: Look up first.\nAction 2:")
    assert policy.calls[2][1] == ["\n"]
    assert policy.calls[3][0].endswith("Observation 2: " + trajectory.turns[1].observation + "\nThought 3:")


def test_loop_step_limit_finishes_empty(store_file):
    env = WikiEnv(load_docstore([store_file]), reward=exact_match)
    policy = Scripted([f" Again.\nAction {i}: Search[Aardvark]" for i in range(1, 4)])
    trajectory = run_episode(policy, env, "", "q", max_steps=3, gold="x")
    assert trajectory.step_limit and len(trajectory.turns) == 3 and trajectory.answer == ""
    assert env.answer == "" and env.steps == 4  # the forced finish[] is the fourth step


def test_completer_equals_plain_generation(tiny_dir):
    from xmodel2.model.folder import load_model_folder
    from xmodel2.model.generate import default_add_bos

    model, tokenizer = load_model_folder(tiny_dir), load_tokenizer(tiny_dir)
    add_bos = default_add_bos(tokenizer)
    completer = ModelCompleter(model, tokenizer, add_bos, max_new_tokens=30)
    prompt = HOTPOT_SHOT + "Question: Who wrote about the analytical engine?\nThought 1:"
    for text in (prompt, prompt + " I search.\nAction 1: Search[Ada]\nObservation 1: none\nThought 2:", prompt):
        for stop in (["\nObservation"], ["e"]):
            expected = generate(model, tokenizer, [text], 30, stop=stop, add_bos=add_bos)[0]
            assert completer.complete(text, stop) == expected
    assert len(completer.cached) > len(tokenizer.encode(prompt))  # the cache kept the shared prefix


def test_context_full_ends_the_episode(tiny_dir, store_file):
    from xmodel2.model.folder import load_model_folder
    from xmodel2.model.generate import default_add_bos

    tokenizer = load_tokenizer(tiny_dir)
    completer = ModelCompleter(load_model_folder(tiny_dir), tokenizer, default_add_bos(tokenizer),
                               max_new_tokens=40, context=len(tokenizer.encode(HOTPOT_SHOT)) + 60)
    env = WikiEnv(load_docstore([store_file]), reward=exact_match)
    trajectory = run_episode(completer, env, HOTPOT_SHOT, "Who wrote about the analytical engine?", gold="x")
    assert trajectory.context_full and not trajectory.step_limit
    assert len(trajectory.turns) <= 1 and trajectory.answer == "" and env.answer == ""


def test_eval_cli_runs_both_tasks_and_writes_traces(tiny_dir, react_data, store_file, tmp_path):
    output = tmp_path / "out" / "results.json"
    code = main(["eval", str(tiny_dir), "--tasks", "hotpotqa_react,fever_react", "--react-data", str(react_data),
                 "--react-store", str(store_file), "--limit", "2", "--output", str(output)])
    assert code == 0
    results = json.loads(output.read_text())
    for task, scores in (("hotpotqa_react", ("em", "f1")), ("fever_react", ("acc",))):
        metrics = {r["metric"]: r for r in results["results"] if r["task"] == task}
        assert set(metrics) == {*scores, "malformed_actions", "format_errors", "step_limit_exits",
                                "context_exits", "mean_steps"}
        assert metrics[scores[0]]["source"].startswith("offline Wikipedia: ")
        traces = output.parent / f"results.{task}.traces.jsonl"
        assert results["details"][task]["traces"] == str(traces)
        records = [json.loads(line) for line in traces.read_text().splitlines()]
        assert len(records) == 2 and all(metrics[m]["n"] == 2 for m in metrics)
        assert metrics["malformed_actions"]["value"] == sum(r["invalid_actions"] for r in records)
        assert metrics["format_errors"]["value"] == sum(r["format_errors"] for r in records)
        assert metrics["step_limit_exits"]["value"] == sum(r["step_limit"] for r in records)
        assert metrics["mean_steps"]["value"] == sum(len(r["turns"]) for r in records) / 2
        for record in records:
            assert 1 <= len(record["turns"]) <= 7
            finished = record["turns"][-1]["observation"].startswith("Episode finished")
            assert finished != (record["step_limit"] or record["context_full"])
            assert all(0.0 <= record[s] <= 1.0 for s in scores)
        # the random model writes no action lines: every turn is a format error and an invalid action
        assert metrics["malformed_actions"]["value"] > 0 and metrics["format_errors"]["value"] > 0
        expected_prefix = "Question: " if task == "hotpotqa_react" else "Claim: "
        assert all(r["task"] == task and r["question"].startswith(expected_prefix) for r in records)


def test_eval_cli_traces_folder_and_step_limit(tiny_dir, react_data, store_file, tmp_path):
    code = main(["eval", str(tiny_dir), "--tasks", "fever_react", "--react-data", str(react_data),
                 "--react-store", str(store_file), "--limit", "3", "--react-max-steps", "1",
                 "--traces", str(tmp_path / "traces")])
    assert code == 0
    records = [json.loads(line) for line in (tmp_path / "traces" / "fever_react.traces.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in records) == [0, 1, 2] and all(len(r["turns"]) == 1 for r in records)


def test_eval_cli_react_errors(tiny_dir, react_data, tmp_path, capsys):
    assert main(["eval", str(tiny_dir), "--tasks", "hotpotqa_react"]) == 2
    assert "needs --react-data" in capsys.readouterr().err
    assert main(["eval", str(tiny_dir), "--tasks", "fever_react", "--react-data", str(tmp_path)]) == 2
    assert "fever.json: ReAct data file not found" in capsys.readouterr().err
    assert main(["eval", str(tiny_dir), "--tasks", "fever_react", "--react-data", str(react_data),
                 "--react-store", str(tmp_path / "none.jsonl")]) == 2
    assert "--react-store" in capsys.readouterr().err
    result = subprocess.run([sys.executable, "-m", "xmodel2", "eval", str(tiny_dir), "--tasks", "hotpotqa_react",
                             "--react-data", str(tmp_path / "missing")], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith("xmodel2: error: --react-data")


@pytest.mark.slow
@pytest.mark.skipif(not REACT_DIR.is_dir(), reason=f"ReAct reference data not found at {REACT_DIR}")
def test_smollm2_react_end_to_end(smollm2_dir, tmp_path):  # noqa: F811
    output = tmp_path / "results.json"
    code = main(["eval", str(smollm2_dir), "--tasks", "hotpotqa_react,fever_react", "--react-data", str(REACT_DIR),
                 "--limit", "5", "--output", str(output)])
    assert code == 0
    results = json.loads(output.read_text())
    table = {(r["task"], r["metric"]): r["value"] for r in results["results"]}
    print("\n".join(f"{task} {metric} {value}" for (task, metric), value in table.items()))
    for task in ("hotpotqa_react", "fever_react"):
        records = (tmp_path / f"results.{task}.traces.jsonl").read_text().splitlines()
        assert len(records) == 5
        assert table[(task, "mean_steps")] >= 1
    # SmolLM2-135M-Instruct follows the few-shot format: most turns carry an action line.
    assert table[("fever_react", "format_errors")] <= 5
