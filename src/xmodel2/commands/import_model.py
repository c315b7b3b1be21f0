"""`xmodel2 import SRC --out DIR`: a Hugging Face / MiniCPM / Xmodel / GGUF model as our folder."""

from __future__ import annotations

import argparse

HELP = ("Import a model (Hugging Face Llama-family, MiniCPM, Xmodel-2 or Xmodel-2.5 folder, "
        "or a .gguf file) into an xmodel2 model folder.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="model folder (config.json + safetensors + tokenizer) or .gguf file")
    parser.add_argument("--out", required=True, help="output model folder")


def run(args: argparse.Namespace) -> int:
    from xmodel2.fileio import check_replaceable
    from xmodel2.folders import check_outputs_apart
    from xmodel2.interop.hf import import_model

    check_outputs_apart([args.out], [args.src])
    check_replaceable(args.out, "model", "import")
    checkpoint = import_model(args.src, args.out)
    config = checkpoint.config
    mup = "on" if config.mup.enabled else "off"
    print(f"imported {args.src} -> {args.out}: {config.num_parameters():,} parameters, "
          f"{config.num_layers} layers, hidden {config.hidden_size}, μP {mup}")
    return 0
