"""`xmodel2 export DIR --format llama|xmodel --out OUT`."""

from __future__ import annotations

import argparse

HELP = ("Export a model folder: --format llama writes a plain LlamaForCausalLM folder with the μP "
        "multipliers folded into the weights; --format xmodel writes the native folder.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="xmodel2 model folder")
    parser.add_argument("--format", default="llama", choices=("llama", "xmodel"),
                        help="output format (default: llama)")
    parser.add_argument("--out", required=True, help="output folder")


def run(args: argparse.Namespace) -> int:
    from xmodel2.fileio import check_replaceable
    from xmodel2.folders import check_outputs_apart
    from xmodel2.interop.llama import export_model

    check_outputs_apart([args.out], [args.src])
    check_replaceable(args.out, "model", "export")
    export_model(args.src, args.out, args.format)
    print(f"exported {args.src} -> {args.out} ({args.format})")
    return 0
