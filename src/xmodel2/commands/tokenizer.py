"""`xmodel2 tokenizer train|encode|decode`."""

from __future__ import annotations

import argparse

from xmodel2.tokenizer.train import MAX_VOCAB_SIZE, MIN_VOCAB_SIZE

HELP = "train a Unigram tokenizer (Xmodel-2 settings), or encode/decode text with one"

SAMPLE_TEXT = "Xmodel-2 splits 2024 into digits; <|im_start|>user\nhi<|im_end|>"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    train = sub.add_parser("train", help="train tokenizer.model + tokenizer_config.json")
    train.add_argument("--input", nargs="+", required=True, metavar="PATH",
                       help="text or JSONL files, or folders of them (.gz allowed)")
    train.add_argument("--out", required=True, metavar="DIR", help="output folder")
    train.add_argument("--vocab-size", type=vocab_size, required=True, metavar="N",
                       help=f"pieces, {MIN_VOCAB_SIZE:,} to {MAX_VOCAB_SIZE:,}")
    train.add_argument("--jsonl-field", default="text", help="JSONL field holding the text (default: text)")
    train.add_argument("--max-sentences", type=non_negative, default=2_000_000, metavar="N",
                       help="train on a seeded sample of at most N lines; 0 = all (default: 2,000,000)")
    train.add_argument("--seed", type=int, default=0)

    encode = sub.add_parser("encode", help="print the token ids of TEXT")
    encode.add_argument("--tokenizer", required=True, metavar="PATH")
    encode.add_argument("--bos", action="store_true", help="prepend BOS")
    encode.add_argument("--eos", action="store_true", help="append EOS")
    encode.add_argument("text", metavar="TEXT", help="UTF-8 text; - reads it from stdin")

    decode = sub.add_parser("decode", help="print the text of token IDs")
    decode.add_argument("--tokenizer", required=True, metavar="PATH")
    decode.add_argument("ids", nargs="+", type=int, metavar="ID")


def run(args: argparse.Namespace) -> int:
    from xmodel2.tokenizer import load_tokenizer

    if args.action == "train":
        return _train(args)
    tokenizer = load_tokenizer(args.tokenizer)
    if args.action == "encode":
        text = _text_to_encode(args.text)
        print(" ".join(map(str, tokenizer.encode(text, add_bos=args.bos, add_eos=args.eos))))
    else:
        print(tokenizer.decode(args.ids))
    return 0


def _text_to_encode(text: str) -> str:
    import sys

    from xmodel2.tokenizer import decode_utf8, require_utf8

    if text == "-":
        return decode_utf8(sys.stdin.buffer.read(), "stdin")
    return require_utf8(text, "TEXT")


def vocab_size(text: str) -> int:
    """--vocab-size, checked before any input is read (argparse reports the bad value)."""
    value = int(text)
    if not MIN_VOCAB_SIZE <= value <= MAX_VOCAB_SIZE:
        raise argparse.ArgumentTypeError(f"{value:,} is outside {MIN_VOCAB_SIZE:,}..{MAX_VOCAB_SIZE:,}")
    return value


def non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _train(args: argparse.Namespace) -> int:
    import time

    from xmodel2.folders import check_outputs_apart
    from xmodel2.tokenizer import load_tokenizer
    from xmodel2.data.readers import read_documents
    from xmodel2.tokenizer.train import train_tokenizer

    check_outputs_apart([args.out], args.input)
    start = time.perf_counter()
    out = train_tokenizer(args.input, args.out, args.vocab_size, jsonl_field=args.jsonl_field,
                          max_sentences=args.max_sentences or None, seed=args.seed,
                          read_documents=read_documents)
    seconds = time.perf_counter() - start
    tokenizer = load_tokenizer(out)
    print(f"wrote {out}: {tokenizer.vocab_size:,} pieces in {seconds:.1f} s "
          f"(fingerprint {tokenizer.fingerprint[:12]})")
    if tokenizer.vocab_size < args.vocab_size:
        print(f"note: the input holds too few distinct pieces for {args.vocab_size:,}; "
              "add text for a full vocabulary")
    ids = tokenizer.encode(SAMPLE_TEXT)
    pieces = [tokenizer.id_to_token(i) for i in ids]
    print(f"sample: {SAMPLE_TEXT!r} -> {len(ids)} tokens: {' '.join(pieces)}")
    return 0
