"""`xmodel2 export DIR --format llama|xmodel|gguf --out OUT [--dtype f16|q8_0]`."""

from __future__ import annotations

import argparse

HELP = ("Export a model folder: --format llama writes a plain LlamaForCausalLM folder with the μP "
        "multipliers folded into the weights; --format xmodel writes the native folder; --format gguf "
        "writes one .gguf file (μP folded, tokenizer included) for llama.cpp and Ollama.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="xmodel2 model folder")
    parser.add_argument("--format", default="llama", choices=("llama", "xmodel", "gguf"),
                        help="output format (default: llama)")
    parser.add_argument("--out", required=True, help="output folder (a .gguf file for --format gguf)")
    parser.add_argument("--dtype", choices=("f16", "q8_0"), default=None,
                        help="GGUF weights: f16 (default) or q8_0 (llama.cpp's 8-bit blocks); "
                             "--format gguf only")


def run(args: argparse.Namespace) -> int:
    from xmodel2.errors import UserError
    from xmodel2.fileio import check_replaceable
    from xmodel2.folders import check_outputs_apart

    check_outputs_apart([args.out], [args.src])
    if args.format == "gguf":
        return _export_gguf(args)
    if args.dtype is not None:
        raise UserError(f"--dtype {args.dtype} is for --format gguf (the {args.format} export keeps "
                        "the stored dtypes)")
    from xmodel2.interop.llama import export_model

    check_replaceable(args.out, "model", "export")
    export_model(args.src, args.out, args.format)
    print(f"exported {args.src} -> {args.out} ({args.format})")
    return 0


def _export_gguf(args: argparse.Namespace) -> int:
    import os

    from xmodel2.errors import UserError
    from xmodel2.interop.gguf_export import export_gguf

    if os.path.isdir(args.out):
        raise UserError(f"--out {args.out}: is a folder; --format gguf writes one file (e.g. model.gguf)")
    if not args.out.endswith(".gguf"):
        raise UserError(f"--out {args.out}: a GGUF file's name ends in .gguf")
    dtype = args.dtype or "f16"
    path = export_gguf(args.src, args.out, dtype)
    print(f"exported {args.src} -> {path} (gguf, {dtype}, {os.path.getsize(path) / 2**20:.1f} MiB)")
    return 0
