"""`xmodel2 eval --api-base`: our own server gives the scores and texts of the in-process route."""

import json

import pytest

from agent_fixtures import store_file  # noqa: F401  (module fixture)
from serve_fixtures import running_server
from test_agents_react import react_data, tiny_dir  # noqa: F401  (module fixtures)
from xmodel2.cli import main

pytest.importorskip("openai")
pytest.importorskip("fastapi")

TASKS = "gsm8k:sample,hotpotqa_react,fever_react"


def evaluate(tmp_path, name, source: list[str], react_data, store_file):  # noqa: F811
    out = tmp_path / f"{name}.json"
    assert main(["eval", *source, "--tasks", TASKS, "--limit", "2", "--react-max-steps", "2", "--react-data", str(react_data),
                 "--react-store", str(store_file), "--output", str(out)]) == 0
    return json.loads(out.read_text())


def metrics(report: dict) -> list:
    return [(m["task"], m["metric"], m["value"], m["n"]) for m in report["results"]]


def test_server_and_in_process_give_the_same_scores(tmp_path, tiny_dir, react_data, store_file):  # noqa: F811
    local = evaluate(tmp_path, "local", [str(tiny_dir)], react_data, store_file)
    with running_server(tiny_dir, "--model-name", "tiny-served") as url:
        remote = evaluate(tmp_path, "remote", ["--api-base", url, "--api-model", "tiny-served"], react_data,
                          store_file)
    assert metrics(remote) == metrics(local)
    assert {m[0] for m in metrics(local)} == {"gsm8k", "hotpotqa_react", "fever_react"}
    # not only the scores: every generated text and every agent answer
    assert remote["details"]["gsm8k:sample"]["generations"] == local["details"]["gsm8k:sample"]["generations"]
    assert any(g["text"] for g in local["details"]["gsm8k:sample"]["generations"])
    for task in ("hotpotqa_react", "fever_react"):
        assert remote["details"][task]["answers"] == local["details"][task]["answers"]
    local_traces = (tmp_path / "local.hotpotqa_react.traces.jsonl").read_text().splitlines()
    remote_traces = (tmp_path / "remote.hotpotqa_react.traces.jsonl").read_text().splitlines()
    assert [json.loads(t)["turns"] for t in remote_traces] == [json.loads(t)["turns"] for t in local_traces]


def test_endpoint_errors_are_one_line(tmp_path, tiny_dir, capsys):  # noqa: F811
    assert main(["eval", "--api-base", "http://127.0.0.1:9/v1", "--api-model", "x", "--tasks", "gsm8k:sample"]) == 2
    assert "cannot connect" in capsys.readouterr().err
    assert main(["eval", "--api-base", "http://127.0.0.1:9/v1", "--tasks", "gsm8k:sample"]) == 2
    assert "--api-model" in capsys.readouterr().err
    assert main(["eval", "--api-base", "http://127.0.0.1:9/v1", "--api-model", "x", "--tasks", "wikitext"]) == 2
    assert "needs the model in memory" in capsys.readouterr().err
    with running_server(tiny_dir) as url:
        assert main(["eval", "--api-base", url, "--api-model", "other", "--tasks", "gsm8k:sample"]) == 2
        assert "serves model" in capsys.readouterr().err
        assert main(["eval", "--api-base", url, "--api-model", "model", "--tasks", "arc_easy:sample"]) == 2
        assert "log-likelihoods" in capsys.readouterr().err
