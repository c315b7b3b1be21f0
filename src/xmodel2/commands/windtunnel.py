"""`xmodel2 windtunnel SUBCOMMAND`: μP instruments run on small proxy models.

Each subcommand is one entry in SUBCOMMANDS: (help, add_arguments, run). New ones (lr-transfer,
search) are added there as siblings.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from xmodel2.errors import UserError

HELP = ("Wind tunnel on small proxies: μP coordinate check (coord-check), learning-rate transfer "
        "(lr-transfer), Bayesian μP search (search).")

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


# ---- lr-transfer ----------------------------------------------------------------------------------

LR_TRANSFER_HELP = """\
Learning-rate transfer across widths, with error bars. Proxies of several widths (fixed depth,
head_dim 32, FFN 2.5 x width) train on the bundled corpus with the production WSD shape (warmup,
constant, exponential decay over the last 20%) at every LR of a log2 grid, once with μP (base
width --dim-model-base) and once with standard parameterization (μP off: one init std, one LR),
under --seeds seeds (each its own initialisation and data order), and are scored by held-out loss
on the Wikipedia validation split. Each curve's optimum is the vertex of a parabola in log2 LR
through the best point and its neighbours; a best point on a grid edge adds an octave on that
side, for every seed. Per seed, the drift is the slope of the optima against log2 width (octaves
per doubling); its mean gets a 95% t-interval over the seeds, and so does each width's optimum.
PASS: μP's drift interval lies inside ±0.25 octave per doubling (--tolerance) while SP's excludes
zero; FAIL: μP's lies wholly outside; otherwise INCONCLUSIVE (with one seed the point drifts are
judged, without intervals). Writes lr_transfer.json, lr_transfer.txt and lr_transfer.png to
--out; exit status 0 on PASS, 1 on FAIL or INCONCLUSIVE. Each run is recorded in
--out/lr_transfer_runs.jsonl as it finishes: the same command again resumes a killed sweep, and
more --seeds, --widths or --lrs train only the runs that are new.

Profiles (explicit options override them):
  --quick   widths 64,128,256,512; 2 layers; 150 steps of 16 x 64 tokens; LRs 2^-10..2^-5;
            3 seeds (144 runs + edge extensions). CPU time per run measured on a 2-core AVX2
            CPU in fp32: about 3.5 minutes at width 512, 1 minute at 256, 20 s at 128, 7 s at
            64, so about 3 CPU-hours (1.5 hours with 2 workers on 2 idle cores; a CPU with fast
            bf16 trains about 5 times faster). Width 512 is 70% of it.
  --middle  widths 64,128,256,512; 4 layers; 200 steps of 16 x 64 tokens; LRs 2^-10..2^-6;
            3 seeds (120 runs + extensions): twice quick's cost (1.8 times per run for the
            depth, 4/3 for the steps, 5/6 for the grid), about an hour on 2 idle cores with
            fast bf16. Deeper, so that hidden matrices, whose SP optimum moves with width,
            outweigh the embedding and head at the narrow widths too (at width 64 they are 42%
            of the weights with 2 layers, 59% with 4); longer, so that the optimum reflects
            training rather than the first steps' transient.
  full      widths 64,128,256,512; 4 layers; 600 steps of 32 x 128 tokens; LRs 2^-11..2^-4;
            3 seeds (192 runs + extensions): about 40 times quick's cost."""

PROFILES = {
    "quick": dict(widths="64,128,256,512", layers=2, steps=150, batch_size=16, seq_len=64, seeds=3,
                  lrs=",".join(f"2^{e}" for e in range(-10, -4))),
    "middle": dict(widths="64,128,256,512", layers=4, steps=200, batch_size=16, seq_len=64, seeds=3,
                   lrs=",".join(f"2^{e}" for e in range(-10, -5))),
    "full": dict(widths="64,128,256,512", layers=4, steps=600, batch_size=32, seq_len=128, seeds=3,
                 lrs=",".join(f"2^{e}" for e in range(-11, -3))),
}


def _add_lr_transfer(parser: argparse.ArgumentParser) -> None:
    profile = parser.add_mutually_exclusive_group()
    profile.add_argument("--quick", action="store_true", help="the quick profile (see above)")
    profile.add_argument("--middle", action="store_true", help="the middle profile (see above)")
    parser.add_argument("--widths", help="comma-separated widths (multiples of 32)")
    parser.add_argument("--lrs", help="comma-separated peak LRs, numbers or powers of two "
                                      "(0.004,2^-7,...)")
    parser.add_argument("--steps", type=int, help="training steps per run")
    parser.add_argument("--layers", type=int, help="proxy depth")
    parser.add_argument("--batch-size", type=int, help="sequences per step")
    parser.add_argument("--seq-len", type=int, help="tokens per sequence")
    parser.add_argument("--seeds", type=int, help="replications of every point, seeds --seed, --seed+1, ...")
    parser.add_argument("--tolerance", type=float, default=0.25,
                        help="μP's allowed drift, octaves per doubling of width (default: %(default)s)")
    parser.add_argument("--dim-model-base", type=int, default=64,
                        help="μP base width (default: %(default)s)")
    parser.add_argument("--init-std", type=float, default=0.1,
                        help="init std: μP's base std, SP's std for every matrix (default: %(default)s)")
    parser.add_argument("--vocab-size", type=int, default=2048,
                        help="tokenizer trained once into the cache (default: %(default)s)")
    add_engine_arguments(parser)
    parser.add_argument("--max-extensions", type=int, default=2,
                        help="octaves added per curve whose best LR sits on a grid edge "
                             "(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="the first seed (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("runs/lr-transfer"),
                        help="output folder (default: %(default)s)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="tokenizer and shard cache (default: OUT/cache)")


def _lr_list(text: str) -> tuple[float, ...]:
    """log2 of each LR in a list like '0.004,2^-7'."""
    import math

    values = []
    for part in text.split(","):
        part = part.strip()
        try:
            lr = 2.0 ** float(part[2:]) if part.startswith("2^") else float(part)
        except ValueError:
            raise UserError(f"--lrs: {part!r} is not a number or a power of two like 2^-7") from None
        if not 0 < lr < 10:
            raise UserError(f"--lrs: learning rate {part} is outside (0, 10)")
        values.append(math.log2(lr))
    if len(set(values)) != len(values):
        raise UserError(f"--lrs: repeated learning rate in {text!r}")
    return tuple(sorted(values))


def _positive(value: int, option: str) -> int:
    if value <= 0:
        raise UserError(f"{option} must be positive, got {value}")
    return value


def _run_lr_transfer(args: argparse.Namespace) -> int:
    from xmodel2.fileio import atomic_write_json, atomic_write_text
    from xmodel2.windtunnel.lr_transfer import TransferSettings, format_table, run_lr_transfer
    from xmodel2.train.distributed import say
    from xmodel2.windtunnel.proxy import ProxySettings, prepare_proxy_data
    from xmodel2.windtunnel.transfer_plot import plot_lr_transfer

    profile_name = "quick" if args.quick else "middle" if args.middle else "full"
    profile = PROFILES[profile_name]
    pick = lambda name: profile[name] if getattr(args, name) is None else getattr(args, name)  # noqa: E731
    widths = _int_list(pick("widths"), "--widths")
    if any(w % 32 for w in widths):
        raise UserError(f"--widths: every width must be a multiple of 32 (head_dim), got {pick('widths')}")
    if len(set(widths)) < 2:
        raise UserError(f"--widths: the drift needs at least two different widths, got {pick('widths')}")
    for name in ("steps", "layers", "batch_size", "seq_len", "seeds", "workers", "vocab_size", "dim_model_base"):
        _positive(pick(name) if name in profile else getattr(args, name), "--" + name.replace("_", "-"))
    if args.max_extensions < 0:
        raise UserError(f"--max-extensions must be >= 0, got {args.max_extensions}")
    if not args.tolerance > 0:
        raise UserError(f"--tolerance must be positive, got {args.tolerance}")
    proxy = ProxySettings(steps=pick("steps"), batch_size=pick("batch_size"), seq_len=pick("seq_len"),
                          seed=args.seed, **engine_settings(args))
    settings = TransferSettings(widths=widths, log2_lrs=_lr_list(pick("lrs")), proxy=proxy,
                                seeds=pick("seeds"), tolerance=args.tolerance, layers=pick("layers"), dim_model_base=args.dim_model_base,
                                init_std=args.init_std, workers=args.workers,
                                max_extensions=args.max_extensions)
    data = prepare_proxy_data(args.cache or args.out / "cache", args.vocab_size, log=say)
    result = run_lr_transfer(settings, data, log=say, journal=args.out / "lr_transfer_runs.jsonl")
    result["profile"] = profile_name
    table = format_table(result)
    atomic_write_json(args.out / "lr_transfer.json", result)
    atomic_write_text(args.out / "lr_transfer.txt", table + "\n")
    png = plot_lr_transfer(result, args.out / "lr_transfer.png")
    print(table)
    print(f"finished in {result['seconds']:.0f} s; wrote {args.out / 'lr_transfer.json'}, "
          f"{args.out / 'lr_transfer.txt'}, {png}")
    return 0 if result["verdict"] == "pass" else 1


# ---- search ---------------------------------------------------------------------------------------

SEARCH_HELP = """\
Bayesian μP search (Optuna TPE) over the report's space: scale_emb 2..20 step 1,
dim_model_base in {32,64,128,256,512,1024}, scale_depth 1..5 step 0.1, lr 0.001..0.1 step
0.001. Each trial trains the nano proxy (hidden 256, 8 layers; --preset picks another) on the
bundled corpus with the WSD shape and is scored by held-out loss; intermediate losses feed a
median pruner. Trials run on --device, one worker per GPU, or on the CPU with its cores split
between the --workers.

The study lives in --storage (default: a SQLite file OUT/study.db; a PostgreSQL or MySQL URL
such as postgresql://user@host/db lets several machines share it). --trials is the study's
total: the command runs trials until the study holds that many finished ones (completed or
pruned), so running it again with a larger --trials resumes, and the same command started on
several machines splits the trials between them, none run twice. A trial whose worker dies
(no heartbeat for 3 x --heartbeat seconds) is run again, with the same parameters, by a
worker that is still alive. Writes best_config.yaml (the
model.mup and train.lr sections `xmodel2 pretrain` accepts, with the matching --key=value
overrides), search.json (trials, parameter importances, timing), history.png and
good_region.png (trials under a loss threshold over each pair of parameters).

Cost: a default trial (120 steps of 16 x 64 tokens on nano) takes about 30 s of CPU time;
measured 126 s wall per trial with 2 workers on 2 busy cores. The report's
300 trials take about 1.5 hours with 2 workers on 2 idle cores (about 5 hours on a busy
machine); pruned trials are cheaper."""


def _add_search(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trials", type=int, default=20,
                        help="finished trials the study should hold, counting earlier runs and other "
                             "processes (default: %(default)s)")
    parser.add_argument("--storage", default=None,
                        help="Optuna storage URL (default: sqlite:///OUT/study.db)")
    parser.add_argument("--study-name", default="mup-search", help="(default: %(default)s)")
    parser.add_argument("--heartbeat", type=int, default=30,
                        help="seconds between a running trial's heartbeats (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=120,
                        help="training steps per trial (default: %(default)s)")
    parser.add_argument("--eval-every", type=int, default=None,
                        help="steps between intermediate validations for pruning (default: steps/5)")
    parser.add_argument("--batch-size", type=int, default=16, help="(default: %(default)s)")
    parser.add_argument("--seq-len", type=int, default=64, help="(default: %(default)s)")
    parser.add_argument("--preset", default="nano", help="proxy model shape (default: %(default)s)")
    parser.add_argument("--vocab-size", type=int, default=2048,
                        help="tokenizer trained once into the cache (default: %(default)s)")
    add_engine_arguments(parser)
    parser.add_argument("--good-loss", type=float, default=None,
                        help="loss threshold of the good-region plot (default: the best quarter)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2,
                        help="worker processes on this machine (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("runs/search"),
                        help="output folder (default: %(default)s)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="tokenizer and shard cache (default: OUT/cache)")


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """How each proxy run trains: the same choices a pretraining run config makes."""
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="auto: bf16 where this device runs bf16 matmuls fast, else fp32")
    parser.add_argument("--device", default="auto",
                        help="auto (the GPUs when there are any, else the CPU), cpu, cuda (every GPU, "
                             "one worker each, round-robin) or cuda:N (default: %(default)s)")
    parser.add_argument("--micro-batch-size", type=_micro_batch, default="auto",
                        help="sequences per forward/backward; the batch is reached by gradient "
                             "accumulation (default: %(default)s, the whole batch where it fits)")
    parser.add_argument("--compile", action="store_true", help="torch.compile each proxy")


def engine_settings(args: argparse.Namespace) -> dict:
    """The ProxySettings fields `add_engine_arguments` sets."""
    return dict(precision=args.precision, device=args.device, micro_batch_size=args.micro_batch_size,
                compile=args.compile)


def _micro_batch(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or auto, got {text!r}")
    return value


def _run_search(args: argparse.Namespace) -> int:
    from xmodel2.model.config import preset
    from xmodel2.train.study import count_trials, default_storage, worker_devices
    from xmodel2.train.distributed import say
    from xmodel2.windtunnel.proxy import ProxySettings, prepare_proxy_data
    from xmodel2.windtunnel.search import SearchSettings, open_study, run_search
    from xmodel2.windtunnel.search_report import format_summary, write_report

    for name in ("trials", "steps", "batch_size", "seq_len", "workers", "vocab_size", "heartbeat"):
        _positive(getattr(args, name), "--" + name.replace("_", "-"))
    preset(args.preset)  # an unknown preset fails here, before any work
    eval_every = args.eval_every if args.eval_every is not None else max(1, args.steps // 5)
    if not 0 < eval_every <= args.steps:
        raise UserError(f"--eval-every must be between 1 and --steps ({args.steps}), got {eval_every}")
    proxy = ProxySettings(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
                          eval_every=eval_every, seed=args.seed, **engine_settings(args))
    settings = SearchSettings(proxy=proxy, preset=args.preset, seed=args.seed)
    devices = worker_devices(args.device, args.workers)  # an absent GPU fails before any work
    args.out.mkdir(parents=True, exist_ok=True)
    url = args.storage or default_storage(args.out)
    # bad URLs and mismatched studies fail before the data is prepared
    before = count_trials(open_study(url, args.study_name, settings, args.heartbeat)).finished
    data = prepare_proxy_data(args.cache or args.out / "cache", args.vocab_size, log=say)
    say(f"study {args.study_name!r} in {url}: {before} of {args.trials} trials finished; "
        f"{args.workers} worker(s) on {', '.join(sorted(set(devices)))}")
    seconds = run_search(url, args.study_name, args.trials, data, settings, args.workers, log=say,
                         heartbeat_s=args.heartbeat)
    study = open_study(url, args.study_name, settings, args.heartbeat)
    summary = write_report(study, args.out, url, args.good_loss, seconds)
    print(format_summary(summary))
    after = count_trials(study).finished
    print(f"the study holds {after} finished trials ({max(0, after - before)} new, from every "
          f"process) after {seconds:.0f} s; wrote " + ", ".join(summary["written"]))
    return 0 if "best" in summary else 1


SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None],
                             Callable[[argparse.Namespace], int]]] = {
    "coord-check": (COORD_CHECK_HELP, _add_coord_check, _run_coord_check),
    "lr-transfer": (LR_TRANSFER_HELP, _add_lr_transfer, _run_lr_transfer),
    "search": (SEARCH_HELP, _add_search, _run_search),
}
