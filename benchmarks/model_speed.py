"""Our model vs transformers' LlamaForCausalLM on the same shapes and weights (eager training).

Training: forward + backward tokens/s of each side's own loss in fp32 and with bf16 autocast.
Decoding: greedy tokens/s at batch 1, our KV-cache loop (eager and compiled; fp32 weights and the
int8 inference format) against `generate` (fp32 and bf16 weights). Each figure is the median of --repeats timed runs after a
warm-up (decoders interleaved); ratios (ours / transformers) come last, and all is written as JSON.

    python benchmarks/model_speed.py --preset nano --out benchmarks/model_speed.json
"""

from __future__ import annotations

import argparse
import copy
import platform
from contextlib import nullcontext

import torch


def build_pair(preset_name: str, vocab: int, seed: int):
    from xmodel2.bench import build_pair as same_function_pair
    from xmodel2.model.config import preset

    config = preset(preset_name, vocab_size=vocab)
    return (config, *same_function_pair(config, seed))


def train_step(model, loss_of, ids, autocast: bool):
    """Forward + backward of each side's own training loss (ours: `next_token_loss`, with its
    fused LM head + cross-entropy; transformers: `labels=` in forward), as a user trains."""
    context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else nullcontext()

    def step():
        model.zero_grad(set_to_none=True)
        with context:
            loss = loss_of(model, ids)
        loss.backward()
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="nano")
    parser.add_argument("--vocab", type=int, default=65280)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="benchmarks/model_speed.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from xmodel2.train.hardware import keep_freed_memory_for_reuse

    keep_freed_memory_for_reuse()  # as the xmodel2 program does; it helps both sides alike

    from xmodel2.bench import hf_generate, hf_loss, interleaved_medians, our_loss
    from xmodel2.model.generate import generate_ids
    from xmodel2.model.quantize import convert_weights

    config, ours, theirs = build_pair(args.preset, args.vocab, seed=0)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=gen)  # inputs + next tokens
    tokens = args.batch * args.seq
    results: dict = {"preset": args.preset, "vocab": args.vocab, "batch": args.batch, "seq": args.seq,
                     "threads": torch.get_num_threads(), "torch": torch.__version__,
                     "machine": platform.processor() or platform.machine(), "train_tokens_per_s": {},
                     "decode_tokens_per_s": {}}

    steps = {}
    for precision, autocast in (("fp32", False), ("bf16_autocast", True)):
        for name, model, loss_of in (("ours", ours, our_loss), ("transformers", theirs, hf_loss)):
            model.train()
            steps[f"{name}_{precision}"] = train_step(model, loss_of, ids, autocast)
    for name, seconds in interleaved_medians(steps, args.repeats).items():
        results["train_tokens_per_s"][name] = tokens / seconds
        print(f"train {name:26s} {tokens / seconds:10.0f} tok/s")

    prompt = torch.randint(0, args.vocab, (1, args.prompt), generator=gen)
    ours.eval()
    theirs.eval()
    new = args.new_tokens

    same = generate_ids(ours, [prompt[0].tolist()], 16)[0]
    with torch.inference_mode():
        ref = theirs.generate(prompt, max_new_tokens=16, do_sample=False, eos_token_id=None,
                              pad_token_id=0)[0, args.prompt:].tolist()
    results["decode_same_greedy_tokens"] = same == ref

    # Decoding reads every weight once per token: besides fp32 on both sides, time transformers
    # with bf16 weights and ours in the int8 inference format (xmodel2/model/quantize.py).
    ours_int8 = convert_weights(copy.deepcopy(ours), "int8")
    theirs_bf16 = copy.deepcopy(theirs).to(torch.bfloat16)
    decoders = {
        "ours": lambda: generate_ids(ours, [prompt[0].tolist()], new),
        "ours_compiled": lambda: generate_ids(ours, [prompt[0].tolist()], new, compile=True),
        "ours_int8": lambda: generate_ids(ours_int8, [prompt[0].tolist()], new),
        "ours_int8_compiled": lambda: generate_ids(ours_int8, [prompt[0].tolist()], new, compile=True),
        "transformers": hf_generate(theirs, prompt, new),
        "transformers_bf16": hf_generate(theirs_bf16, prompt, new),
    }
    for name, seconds in interleaved_medians(decoders, args.repeats).items():
        results["decode_tokens_per_s"][name] = new / seconds
        print(f"decode batch 1     {name:18s} {new / seconds:10.1f} tok/s")

    train, decode = results["train_tokens_per_s"], results["decode_tokens_per_s"]
    results["ratios"] = {
        "train_fp32": train["ours_fp32"] / train["transformers_fp32"],
        "train_bf16_autocast": train["ours_bf16_autocast"] / train["transformers_bf16_autocast"],
        "decode": decode["ours"] / decode["transformers"],
        "decode_compiled": decode["ours_compiled"] / decode["transformers"],
        "decode_int8_compiled": decode["ours_int8_compiled"] / decode["transformers"],
        "decode_int8_compiled_vs_bf16": decode["ours_int8_compiled"] / decode["transformers_bf16"],
    }
    print(f"greedy tokens identical: {results['decode_same_greedy_tokens']}")
    for key, value in results["ratios"].items():
        print(f"ratio ours/transformers {key:30s} {value:5.2f}x")
    from xmodel2.fileio import atomic_write_json

    atomic_write_json(args.out, results)


if __name__ == "__main__":
    main()
