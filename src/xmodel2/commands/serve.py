"""`xmodel2 serve DIR [--host --port]`: an OpenAI-compatible API over a model folder."""

from __future__ import annotations

import argparse

HELP = """Serve a model folder over OpenAI's API: /v1/chat/completions (ChatML), /v1/completions, /v1/models.

Streaming (server-sent events), stop strings, max_tokens, temperature, top_p and seed are honoured.
Requests that arrive together are decoded together in one batch; bad requests get OpenAI's error
JSON with a 4xx status. Binds to 127.0.0.1 unless --host says otherwise (the API has no authentication).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model folder (config.json, model.safetensors, tokenizer)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--model-name", default=None,
                        help="the name clients pass as 'model' (default: the folder's name)")
    parser.add_argument("--dtype", choices=("fp32", "bf16", "int8"), default="fp32",
                        help="weights: fp32 (default), bf16, or int8 (weight-only)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--max-batch", type=int, default=16, help="most requests decoded together (default 16)")


def run(args: argparse.Namespace) -> int:
    import socket
    from pathlib import Path

    from xmodel2.commands.generate import load_for_inference
    from xmodel2.errors import UserError

    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise UserError(f"serve needs `pip install 'xmodel2[serve]'` ({exc.name} is missing)") from None
    from xmodel2.serve.app import create_app
    from xmodel2.serve.engine import Engine

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be 0-65535, got {args.port}")
    if args.max_batch < 1:
        raise UserError(f"--max-batch must be at least 1, got {args.max_batch}")
    model, tokenizer = load_for_inference(args.model, args.device, args.dtype)
    name = args.model_name or Path(args.model).resolve().name
    # Bind here, so that a taken port is one line and --port 0 can say which port it got.
    try:
        sock = socket.create_server((args.host, args.port))
    except OSError as exc:
        raise UserError(f"--host {args.host} --port {args.port}: cannot listen ({exc.strerror or exc})") from None
    host, port = sock.getsockname()[:2]
    engine = Engine(model, tokenizer, max_batch=args.max_batch)
    print(f"serving {args.model} as '{name}' at http://{host}:{port}/v1 (Ctrl-C stops)", flush=True)
    server = uvicorn.Server(uvicorn.Config(create_app(engine, name), log_level="warning"))
    try:
        server.run(sockets=[sock])
    finally:
        engine.close()
    return 0
