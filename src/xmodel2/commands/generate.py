"""`xmodel2 generate DIR --prompt TEXT --max-new-tokens N`: print the model's continuation."""

from __future__ import annotations

import argparse

HELP = "Continue a prompt with a model folder (KV-cache decoding, greedy or sampled)."


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=64,
                        help="tokens to generate (default 64); the prompt plus these must fit the model's "
                             "context (max_position_embeddings in config.json), else it is an error")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 means greedy (default)")
    parser.add_argument("--top-k", type=int, default=None, help="sample only from the k most likely tokens")
    parser.add_argument("--top-p", type=float, default=None, help="sample only from the top-p nucleus")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--stop", action="append", default=None, metavar="STR",
                        help="stop when this text appears (repeatable); it is not printed")
    # quantize.WEIGHT_FORMATS, written out: importing that module would load torch for --help.
    parser.add_argument("--dtype", choices=("fp32", "bf16", "int8"), default="fp32",
                        help="weights: fp32 (default), bf16, or int8 (weight-only, bf16 activations: "
                             "about 4x faster decoding on CPU, slightly different logits)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--compile", action="store_true",
                        help="decode through a torch.compile'd fixed-shape step (pays off for long outputs)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model folder (config.json, model.safetensors, tokenizer)")
    parser.add_argument("--prompt", required=True, help="text to continue")
    bos = parser.add_mutually_exclusive_group()
    bos.add_argument("--bos", dest="add_bos", action="store_true", default=None,
                     help="prepend BOS (default: as tokenizer_config.json says)")
    bos.add_argument("--no-bos", dest="add_bos", action="store_false")
    add_sampling_arguments(parser)


def load(args: argparse.Namespace):
    """The model and tokenizer of `args.model`, after checking the sampling arguments."""
    import math

    from xmodel2.errors import UserError

    if args.max_new_tokens < 0:
        raise UserError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise UserError(f"--temperature must be a finite number >= 0, got {args.temperature}")
    if args.top_k is not None and args.top_k <= 0:
        raise UserError(f"--top-k must be positive, got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise UserError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    model, tokenizer = load_for_inference(args.model, args.device, args.dtype)
    context = model.config.max_position_embeddings
    if args.max_new_tokens >= context:
        raise UserError(f"--max-new-tokens {args.max_new_tokens}: the model's context is {context} "
                        "tokens (max_position_embeddings), prompt included")
    return model, tokenizer


def load_for_inference(model_dir: str, device_name: str, dtype: str):
    """(model in eval mode with weights in `dtype`, tokenizer) of a model folder, on --device."""
    import torch

    from xmodel2.errors import UserError
    from xmodel2.model.folder import load_model_folder
    from xmodel2.model.quantize import convert_weights
    from xmodel2.tokenizer import load_tokenizer
    from xmodel2.train.hardware import pick_device

    device = pick_device(device_name, what="--device")
    model = load_model_folder(model_dir, device=device,
                              dtype=torch.bfloat16 if dtype == "bf16" else torch.float32)
    model = convert_weights(model.eval(), dtype)
    tokenizer = load_tokenizer(model_dir)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise UserError(f"{model_dir}: tokenizer has {tokenizer.vocab_size} tokens but the model "
                        f"only {model.config.vocab_size}")
    return model, tokenizer


def check_fits_context(model, prompt_tokens: int, max_new_tokens: int, what: str) -> None:
    """Positions past the context were never trained (RoPE extrapolates into noise): refuse."""
    from xmodel2.errors import UserError

    context = model.config.max_position_embeddings
    if prompt_tokens + max_new_tokens > context:
        raise UserError(f"{what}: {prompt_tokens} prompt tokens + --max-new-tokens {max_new_tokens} "
                        f"exceed the model's context of {context} tokens (max_position_embeddings)")


def run(args: argparse.Namespace) -> int:
    from xmodel2.model.generate import default_add_bos, generate
    from xmodel2.tokenizer import require_utf8

    require_utf8(args.prompt, "--prompt")
    for stop in args.stop or []:
        require_utf8(stop, "--stop")
    model, tokenizer = load(args)
    add_bos = default_add_bos(tokenizer) if args.add_bos is None else args.add_bos
    check_fits_context(model, len(tokenizer.encode(args.prompt, add_bos=add_bos)), args.max_new_tokens,
                       "--prompt")
    text = generate(model, tokenizer, [args.prompt], args.max_new_tokens, temperature=args.temperature,
                    top_k=args.top_k, top_p=args.top_p, stop=args.stop, seed=args.seed,
                    add_bos=args.add_bos, compile=args.compile)[0]
    print(text)
    return 0
