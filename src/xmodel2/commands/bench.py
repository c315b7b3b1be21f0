"""`xmodel2 bench`: our model against transformers' Llama on identical shapes, in one run."""

from __future__ import annotations

import argparse
import copy
import platform
from pathlib import Path

HELP = """Benchmark training and decoding speed against transformers on identical shapes.

Default shape (a small model at scale-out proportions): hidden 512, 8 layers, 8 heads, 4 KV heads, ffn 1280,
vocab 32,000, sequence 512, batch 8. Prints training tokens/s and MFU (eager and compiled),
the measured fp32/bf16 matmul peaks, the step's matmul floor, prefill/decode tokens/s at batch
1 and 8 with the bytes each decoded token reads and the fraction of the measured memory-copy
bandwidth that reaches, and the ratios last; writes JSON. Takes several minutes on 2 CPU cores (compilation).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--ffn", type=int, default=1280)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per figure (median)")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="auto: bf16 where this CPU runs bf16 matmuls fast, else fp32")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens for prefill/decode")
    parser.add_argument("--new-tokens", type=int, default=32, help="decoded tokens per prompt")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--out", default="runs/bench.json")


def run(args: argparse.Namespace) -> int:
    import torch

    from xmodel2 import bench
    from xmodel2.errors import UserError
    from xmodel2.model.generate import generate_ids
    from xmodel2.model.mup import build_optimizer
    from xmodel2.model.quantize import convert_weights
    from xmodel2.train.hardware import measure_matmul_flops, resolve_precision

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        shape = bench.BenchShape(args.hidden, args.layers, args.heads, args.kv_heads, args.ffn,
                                 args.vocab, args.seq, args.batch)
        config = shape.config()
    except (ValueError, TypeError) as exc:
        raise UserError(f"bad benchmark shape: {exc}") from None
    args.precision = resolve_precision(args.precision, "cpu")
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    result: dict = {"shape": vars(shape), "precision": args.precision, "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "machine": platform.machine(),
                    "repeats": args.repeats}

    say = lambda text: print(text, flush=True)  # noqa: E731

    def measure_peaks() -> dict[str, float]:
        return {name: measure_matmul_flops(dt, size=2048) for name, dt in
                (("fp32", torch.float32), ("bf16", torch.bfloat16))}

    # The peak is measured again after the training figures and the higher one kept: a single
    # measurement at start-up has come out as low as 677 against 880-950 GFLOP/s (bf16) later in
    # the same run, which would inflate every MFU.
    peaks = measure_peaks()

    ours, theirs = bench.build_pair(config)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, shape.vocab, (shape.batch, shape.seq + 1), generator=gen)
    tokens = shape.batch * shape.seq
    step_flops = bench.training_flops_per_step(config, shape.batch, shape.seq)

    steps = {}
    optimizers = {"ours": build_optimizer(ours, config, lr=1e-4),
                  "transformers": torch.optim.AdamW(theirs.parameters(), lr=1e-4, fused=True)}
    for name, model, loss_of in (("ours", ours, bench.our_loss), ("transformers", theirs, bench.hf_loss)):
        model.train()
        steps[f"{name} eager"] = bench.training_step(model, loss_of, optimizers[name], ids, args.precision)
        if not args.no_compile:
            say(f"compiling {name} ...")
            steps[f"{name} compiled"] = bench.training_step(torch.compile(model), loss_of,
                                                            optimizers[name], ids, args.precision)
    seconds = bench.interleaved_medians(steps, args.repeats)
    later = measure_peaks()
    peaks = {name: max(peaks[name], later[name]) for name in peaks}
    result["matmul_peak_flops"] = peaks
    say(f"matmul peak (2048^3, best of two measurements): fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, "
        f"bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s")
    floor = bench.matmul_floor_seconds(config, shape.batch, shape.seq, dtype)
    result["matmul_floor_seconds"] = floor
    result["training"] = {}
    say(f"\ntraining step, {shape.batch}x{shape.seq} tokens, {args.precision}, median of {args.repeats}")
    say(f"{'variant':24s} {'s/step':>8s} {'tokens/s':>10s} {'MFU':>6s} {'x floor':>8s}")
    for name, sec in seconds.items():
        mfu = step_flops / sec / peaks[args.precision]
        shown = mfu if 0 <= mfu <= 1 else None  # above 100%: the peak was measured too low
        result["training"][name] = {"seconds": sec, "tokens_per_s": tokens / sec, "mfu": shown,
                                    "x_matmul_floor": sec / floor}
        mfu_cell = f"{100 * mfu:5.1f}%" if shown is not None else "   n/a"
        say(f"{name:24s} {sec:8.3f} {tokens / sec:10.0f} {mfu_cell} {sec / floor:8.2f}")
    say(f"{'matmul floor':24s} {floor:8.3f} {tokens / floor:10.0f}")

    result["generation"] = {}
    ours.eval()
    theirs.eval()
    # Decoding is bound by reading weights: give transformers its half-width (bf16) run too, and
    # ours its int8 inference format (quantize.py), each labelled with its weights.
    ours_int8 = convert_weights(copy.deepcopy(ours), "int8")
    theirs_bf16 = copy.deepcopy(theirs).to(torch.bfloat16)
    say(f"\nprefill {args.prompt} tokens, decode {args.new_tokens} tokens, greedy "
        "(weights fp32 unless named)")
    models = {"ours": ours, "transformers": theirs, "transformers bf16": theirs_bf16, "ours int8": ours_int8}
    # side -> (its model, compiled decode step; None for transformers' generate)
    sides = {"ours": ("ours", False), "transformers": ("transformers", None),
             "transformers bf16": ("transformers bf16", None), "ours int8": ("ours int8", False)}
    if not args.no_compile:
        sides.update({"ours compiled": ("ours", True), "ours int8 compiled": ("ours int8", True)})
    bandwidth = bench.memory_copy_bandwidth()
    result["memory_copy_bandwidth"] = bandwidth
    say(f"memory-copy bandwidth (512 MiB, read + write, median): {bandwidth / 1e9:.1f} GB/s")
    context = args.prompt + args.new_tokens / 2  # mean cached positions over the decode
    kv_dtypes = {name: getattr(model, "activation_dtype", None) or next(model.parameters()).dtype
                 for name, model in models.items()}
    for batch in (1, 8):
        prompt = torch.randint(0, shape.vocab, (batch, args.prompt), generator=gen)
        variants = {f"{name} prefill": bench.prefill(model, prompt) for name, model in models.items()}
        for side, (name, compile_decode) in sides.items():
            variants[f"{side} generate"] = (
                bench.hf_generate(models[name], prompt, args.new_tokens) if compile_decode is None
                else lambda m=models[name], c=compile_decode: generate_ids(m, prompt.tolist(),
                                                                           args.new_tokens, compile=c))
        t = bench.interleaved_medians(variants, args.repeats)
        for side, (name, _) in sides.items():
            prefill = batch * args.prompt / t[f"{name} prefill"]
            # decode rate: generated tokens over generate's time minus one prefill
            decode_time = max(1e-9, t[f"{side} generate"] - t[f"{name} prefill"])
            decode = batch * args.new_tokens / decode_time
            per_token = bench.decode_bytes_per_token(models[name], config, batch, context, kv_dtypes[name])
            fraction = decode * per_token / bandwidth
            result["generation"][f"{side} batch {batch}"] = {
                "prefill_tokens_per_s": prefill, "decode_tokens_per_s": decode,
                "decode_bytes_per_token": per_token, "bandwidth_fraction": fraction}
            say(f"batch {batch} {side:19s} prefill {prefill:9.0f} tok/s   decode {decode:8.1f} tok/s   "
                f"{per_token / 1e6:7.1f} MB/token   {100 * fraction:5.1f}% of bandwidth")

    train, gen_r = result["training"], result["generation"]
    ratios = {"eager training, ours / transformers":
              train["ours eager"]["tokens_per_s"] / train["transformers eager"]["tokens_per_s"]}
    if not args.no_compile:
        ratios["compiled training, ours / transformers compiled"] = (
            train["ours compiled"]["tokens_per_s"] / train["transformers compiled"]["tokens_per_s"])
        ratios["ours compiled step / matmul floor"] = train["ours compiled"]["x_matmul_floor"]
    ratios["ours eager step / matmul floor"] = train["ours eager"]["x_matmul_floor"]
    decode = {name: value["decode_tokens_per_s"] for name, value in gen_r.items()}
    for batch in (1, 8):
        int8 = "ours int8" if args.no_compile else "ours int8 compiled"
        pairs = [("ours", "transformers")] + ([] if args.no_compile else [("ours compiled", "transformers")])
        pairs += [(int8, "transformers"), (int8, "transformers bf16")]
        for mine, theirs_name in pairs:
            ratios[f"decode batch {batch}, {mine} / {theirs_name}"] = (
                decode[f"{mine} batch {batch}"] / decode[f"{theirs_name} batch {batch}"])
        ratios[f"prefill batch {batch}, ours / transformers"] = (
            gen_r[f"ours batch {batch}"]["prefill_tokens_per_s"]
            / gen_r[f"transformers batch {batch}"]["prefill_tokens_per_s"])
    result["ratios"] = ratios
    say("\nratios")
    for name, value in ratios.items():
        say(f"  {name:58s} {value:6.2f}x")
    out = Path(args.out)
    from xmodel2.fileio import atomic_write_json

    atomic_write_json(out, result)
    say(f"wrote {out}")
    return 0
