"""The `xmodel2` command: one subcommand per stage of the recipe.

Each subcommand lives in `xmodel2.commands.<module>` and exposes `HELP`, `add_arguments(parser)`
and `run(args) -> int`; heavy imports happen inside `run` so `xmodel2 --help` stays instant.
Any `UserError`, bad usage, or `OSError` on a path the user named becomes one line,
`xmodel2: error: ...`, and exit status 2. A subcommand whose module fails to import is an
error naming it and the cause (exit status 1), never a command missing from the help.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

from xmodel2 import __version__
from xmodel2.errors import UserError

# subcommand name -> module under xmodel2.commands
COMMANDS = {
    "tokenizer": "tokenizer",
    "prepare": "prepare",
    "pretrain": "pretrain",
    "generate": "generate",
    "chat": "chat",
    "eval": "evaluate",
    "import": "import_model",
    "export": "export",
    "windtunnel": "windtunnel",
    "ratio-search": "ratio_search",
    "dedup": "dedup",
    "bench": "bench",
    "plan": "plan",
    "serve": "serve",
}


class OneLineParser(argparse.ArgumentParser):
    """argparse, except that bad usage is one line like every other error (not usage + error);
    `--help` still shows the usage. Subcommand parsers inherit the class."""

    def error(self, message: str):
        command = self.prog.removeprefix("xmodel2").strip()  # "generate", "tokenizer train", ...
        self.exit(2, f"xmodel2: error: {command + ': ' if command else ''}{message}\n")


class CommandLoadError(Exception):
    """A subcommand's module does not import: a broken or incomplete install, not bad input.
    No command is ever left out of the program quietly."""


def load_command(name: str, module_name: str):
    """The module of subcommand `name`; CommandLoadError naming the command and the cause."""
    qualified = f"xmodel2.commands.{module_name}"
    try:
        return importlib.import_module(qualified)
    except Exception as exc:  # any failure at import time breaks the command the same way
        raise CommandLoadError(f"command {name!r} ({qualified}) failed to load: "
                               f"{type(exc).__name__}: {exc}") from exc


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="xmodel2", description="Build Xmodel-2-style μP language models end to end.")
    parser.add_argument("--version", action="version", version=f"xmodel2 {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = load_command(name, module_name)
        summary = module.HELP.strip().splitlines()[0].replace("%", "%%")  # argparse %-formats help
        command = sub.add_parser(name, help=summary, description=module.HELP,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(command)
        command.set_defaults(handler=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
    except CommandLoadError as exc:
        # Exit 1, not the usage status 2: the install is at fault, not the command line.
        print(f"xmodel2: error: {exc}", file=sys.stderr)
        return 1
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 0 if args.command is None else 2
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
    try:
        return int(args.handler(args) or 0)
    except UserError as exc:
        print(f"xmodel2: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        message = os_error_line(exc, getattr(args, "out", None) or getattr(args, "output", None))
        if message is None:
            raise
        print(f"xmodel2: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("xmodel2: interrupted", file=sys.stderr)
        return 130


# Failures of the machine or of a path, not bugs: the user can act on them from one line.
USER_FIXABLE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT,
                       errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ENOTEMPTY,
                       errno.EFBIG, errno.EMFILE, errno.ENFILE, errno.EIO, errno.ELOOP, errno.EXDEV}


def os_error_line(exc: OSError, output: str | None = None) -> str | None:
    """`PATH: reason` for an OSError on a path. A write that fails for want of space carries no
    file name: it is blamed on the command's output (`--out`/`--output`). None for anything else,
    which stays a traceback."""
    reason = exc.strerror or str(exc)
    if exc.filename is not None:
        if output and _is_temporary_sibling(os.fsdecode(exc.filename), output):
            return f"{output}: {reason}"
        target = f" -> {os.fsdecode(exc.filename2)}" if exc.filename2 is not None else ""
        return f"{os.fsdecode(exc.filename)}{target}: {reason}"
    if exc.errno in USER_FIXABLE_ERRNOS:
        return f"{output}: {reason}" if output else reason
    return None


def _is_temporary_sibling(path: str, output: str) -> bool:
    """Atomic writers work in `.NAME.*` beside the output; the user knows only the output."""
    path, output = os.path.abspath(path), os.path.abspath(output)
    return (os.path.dirname(path) == os.path.dirname(output)
            and os.path.basename(path).startswith(f".{os.path.basename(output)}."))


def entry() -> None:
    """The `xmodel2` program (console script and `python -m xmodel2`): `main` in a process tuned
    for large CPU tensors (see `keep_freed_memory_for_reuse`). Tests call `main` directly."""
    from xmodel2.train.hardware import keep_freed_memory_for_reuse

    keep_freed_memory_for_reuse()
    raise SystemExit(main())


if __name__ == "__main__":
    entry()
