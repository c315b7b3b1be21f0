"""`xmodel2 chat DIR`: an interactive ChatML chat on stdin/stdout (`/exit` or end of input quits)."""

from __future__ import annotations

import argparse
import sys

HELP = "Chat with a model folder in ChatML: one line per user turn; /exit quits."


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

    model, tokenizer = load(args)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() == "/exit":
            return 0
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line.rstrip("\n")})
        prompt = tokenizer.encode_chat(messages, add_generation_prompt=True)
        new = generate_ids(model, [prompt], args.max_new_tokens, temperature=args.temperature,
                           top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                           stop_ids=stop_ids_for(model, tokenizer, chat=True),
                           should_stop=stop_string_check(tokenizer, args.stop),
                           compile=args.compile)[0]
        reply = cut_at_stop(continuation_text(tokenizer, prompt, new), args.stop).strip()
        messages.append({"role": "assistant", "content": reply})
        print(reply, flush=True)
