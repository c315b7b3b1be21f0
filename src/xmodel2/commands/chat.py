"""`xmodel2 chat DIR`: an interactive ChatML chat on stdin/stdout (`/exit` or end of input quits)."""

from __future__ import annotations

import argparse
import itertools
import sys

HELP = """Chat with a model folder in ChatML: one line per user turn; /exit quits.

When the conversation plus --max-new-tokens outgrows the model's context (max_position_embeddings),
the oldest turns are dropped (the system message stays) and a note on stderr says so; a single
turn too long for the context is an error. Input must be UTF-8 text.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from xmodel2.commands.generate import add_sampling_arguments

    parser.add_argument("model", help="model folder with a ChatML-capable tokenizer")
    parser.add_argument("--system", default=None, help="system message for the conversation")
    add_sampling_arguments(parser)
    parser.set_defaults(max_new_tokens=256)


def run(args: argparse.Namespace) -> int:
    from xmodel2.commands.generate import load
    from xmodel2.model.generate import (continuation_text, cut_at_stop, generate_ids,
                                        stop_ids_for, stop_string_check)
    from xmodel2.tokenizer import decode_utf8, require_utf8

    if args.system:
        require_utf8(args.system, "--system")
    model, tokenizer = load(args)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    interactive = sys.stdin.isatty()
    for number in itertools.count(1):
        if interactive:
            print("> ", end="", flush=True)
        line = decode_utf8(sys.stdin.buffer.readline(), f"stdin line {number}")
        if not line or line.strip() == "/exit":
            return 0
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line.rstrip("\n")})
        prompt = fitting_prompt(model, tokenizer, messages, args.max_new_tokens, f"stdin line {number}")
        new = generate_ids(model, [prompt], args.max_new_tokens, temperature=args.temperature,
                           top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                           stop_ids=stop_ids_for(model, tokenizer, chat=True),
                           should_stop=stop_string_check(tokenizer, args.stop),
                           compile=args.compile)[0]
        reply = cut_at_stop(continuation_text(tokenizer, prompt, new), args.stop).strip()
        messages.append({"role": "assistant", "content": reply})
        print(reply, flush=True)


def fitting_prompt(model, tokenizer, messages: list[dict], max_new_tokens: int, what: str) -> list[int]:
    """The conversation's prompt ids, after dropping the oldest turns (never the system message
    or the newest user turn) until it and `max_new_tokens` fit the context; `messages` is
    trimmed in place so later turns do not pay again."""
    from xmodel2.commands.generate import check_fits_context

    context = model.config.max_position_embeddings
    prompt = tokenizer.encode_chat(messages, add_generation_prompt=True)
    first = 1 if messages[0]["role"] == "system" else 0
    dropped = 0
    while len(prompt) + max_new_tokens > context and len(messages) - first > 1:
        del messages[first]
        dropped += 1
        prompt = tokenizer.encode_chat(messages, add_generation_prompt=True)
    if dropped:
        print(f"xmodel2: dropped the {dropped} oldest turn(s) to fit the model's context of {context} "
              "tokens", file=sys.stderr, flush=True)
    check_fits_context(model, len(prompt), max_new_tokens, what)
    return prompt
