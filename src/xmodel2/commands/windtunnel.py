"""`xmodel2 windtunnel SUBCOMMAND`: μP instruments run on small proxy models.

Each subcommand is one entry in SUBCOMMANDS: (help, add_arguments, run). New ones (lr-transfer,
search) are added there as siblings.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from xmodel2.errors import UserError

HELP = "Wind tunnel on small proxies: μP coordinate check (coord-check)."

COORD_CHECK_HELP = """\
μP coordinate check. Models of several widths (fixed dim_model_base and head_dim) or, with
--depth, several depths take a few AdamW steps at a large LR on one fixed batch of real text
(UTF-8 bytes), for several seeds. Per module output, the mean |x_t| and mean |x_t - x_0| are
fitted on log-log axes; μP passes when every hidden statistic has spread <= 1.5 and
|slope| <= 0.15 (logits: last step only). Negative controls (standard parameterization, μP
without hidden LR scaling, logit scaling or init scaling) must fail. Writes coord_check.json,
coord_check.txt and one PNG per arm to --out; exit status 0 on PASS, 1 on FAIL or INCONCLUSIVE."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="windtunnel_command", metavar="SUBCOMMAND")
    for name, (help_text, add, run_sub) in SUBCOMMANDS.items():
        command = sub.add_parser(name, help=help_text.split(". ")[0], description=help_text,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        add(command)
        command.set_defaults(windtunnel_handler=run_sub)


def run(args: argparse.Namespace) -> int:
    handler = getattr(args, "windtunnel_handler", None)
    if handler is None:
        raise UserError(f"windtunnel needs a subcommand: {', '.join(SUBCOMMANDS)}")
    return handler(args)


# ---- coord-check ----------------------------------------------------------------------------------

def _add_coord_check(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--widths", default="64,128,256,512,1024",
                        help="comma-separated widths of the width sweep (default: %(default)s)")
    parser.add_argument("--depth", action="store_true",
                        help="sweep depth (--depths) at one width (--width) instead of width")
    parser.add_argument("--depths", default="2,4,8,16",
                        help="comma-separated depths of the depth sweep (default: %(default)s)")
    parser.add_argument("--width", type=int, default=256, help="width of the depth sweep")
    parser.add_argument("--layers", type=int, default=2, help="depth of the width sweep")
    parser.add_argument("--steps", type=int, default=4, help="AdamW steps (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=3, help="init seeds (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=0.01,
                        help="base learning rate; μP divides it by m for hidden matrices")
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--dim-model-base", type=int, default=64,
                        help="μP base width, fixed across the sweep (default: %(default)s)")
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--text", type=Path, default=None,
                        help="text file for the fixed batch (default: the Python language "
                             "reference shipped with CPython)")
    parser.add_argument("--out", type=Path, default=Path("runs/coord-check"),
                        help="output folder (default: %(default)s)")


def _int_list(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise UserError(f"{option}: expected comma-separated integers, got {text!r}") from None
    if any(v <= 0 for v in values):
        raise UserError(f"{option}: values must be positive, got {text!r}")
    return values


def _run_coord_check(args: argparse.Namespace) -> int:
    from xmodel2.windtunnel.coord_check import CoordCheckSettings, run_coord_check, write_outputs
    from xmodel2.windtunnel.coord_report import format_table

    axis = "depth" if args.depth else "width"
    values = _int_list(args.depths, "--depths") if args.depth else _int_list(args.widths, "--widths")
    settings = CoordCheckSettings(
        axis=axis, values=values, width=args.width, layers=args.layers, head_dim=args.head_dim,
        dim_model_base=args.dim_model_base, vocab_size=args.vocab_size,
        batch_size=args.batch_size, seq_len=args.seq_len, steps=args.steps, seeds=args.seeds,
        lr=args.lr, weight_decay=args.weight_decay, text=args.text)
    result = run_coord_check(settings)
    written = write_outputs(result, args.out)
    print(format_table(result))
    print(f"batch: {result['batch_source']}")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0 if result["verdict"] == "pass" else 1


SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None],
                             Callable[[argparse.Namespace], int]]] = {
    "coord-check": (COORD_CHECK_HELP, _add_coord_check, _run_coord_check),
}
