"""`xmodel2 ratio-search`: find the decay stage's SFT share and category mix with short branches."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = """Search the decay-stage SFT share and category mix with short decay branches.

From one stable-stage checkpoint (--checkpoint, or trained first into OUT/stable from the
config's stages before its decay stage), each trial trains the decay stage with another mixture
(SFT share 0-90%, category mix) in one of --workers processes (one per GPU with --device auto or
cuda, else splitting the CPU's cores), and is scored on held-out SFT and pretraining loss (and
`xmodel2 eval` accuracy with --eval-tasks). Trials live in an Optuna study (--storage, default
OUT/study.db; a PostgreSQL or MySQL URL lets several machines share it): --trials is the study's
total, so re-running resumes, and the same command on other machines (same --storage, --study
and --checkpoint) splits the trials, none run twice; the trial of a worker that died (no
heartbeat for 3 x --heartbeat seconds) is run again by a live one. The best share is also
estimated from a quadratic fit of the objective against share, with a 95% confidence interval
from a bootstrap over the trials (printed, shaded in the plot, in OUT/best-share.json), and
compared with the report's 60-69%. Writes OUT/best-mixture.yaml (a run config for
`xmodel2 pretrain` with the best decay mixture), OUT/trials.jsonl, OUT/best-share.json and
OUT/ratio-search.png.
--quick: a 240-step stable stage (unless --checkpoint), then 20 trials (10 shares x 2 mixes) of
16 decay steps each, scored on smaller held-out sets.
Config keys can be overridden as in pretrain: --train.seed=1 ...
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="run config YAML (default: the embedded default)")
    parser.add_argument("--out", default="runs/ratio-search", help="output folder")
    parser.add_argument("--checkpoint", default=None, help="stable-stage checkpoint folder to branch from")
    parser.add_argument("--sft", action="append", default=None, metavar="CATEGORY=PATH",
                        help="SFT JSONL file with its category (repeatable; default: the bundled set)")
    parser.add_argument("--held-out-percent", type=int, default=5, help="SFT conversations held out for scoring")
    parser.add_argument("--sampler", choices=("grid", "tpe"), default="grid")
    parser.add_argument("--shares", default=None, help="grid SFT shares, comma-separated (default 0,0.1,...,0.9)")
    parser.add_argument("--mixes", default=None, help="grid category mixes: uniform,reasoning,knowledge,code")
    parser.add_argument("--trials", type=int, default=None,
                        help="finished trials the study should hold, from every process (default: grid size, 40 for tpe)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes on this machine")
    parser.add_argument("--device", default=None,
                        help="where branches train: auto, cpu, cuda (one worker per GPU) or cuda:N "
                             "(default: the config's train.device)")
    parser.add_argument("--heartbeat", type=int, default=30,
                        help="seconds between a running trial's heartbeats (default: %(default)s)")
    parser.add_argument("--stable-steps", type=int, default=None,
                        help="without --checkpoint: train the stable stage for this many steps (default: the config's)")
    parser.add_argument("--decay-steps", type=int, default=None, help="steps of each branch (default: the config's)")
    parser.add_argument("--half-life", type=float, default=None, help="exponential decay half-life in steps")
    parser.add_argument("--objective", choices=("mean", "sft", "answer", "accuracy"), default="mean",
                        help="mean of held-out SFT and pretraining loss (default), SFT loss, SFT answer-token "
                             "loss, or eval accuracy")
    parser.add_argument("--eval-tasks", default=None, help="`xmodel2 eval` tasks scored on each branch")
    parser.add_argument("--eval-limit", type=int, default=50)
    parser.add_argument("--storage", default=None, help="Optuna storage URL (default sqlite:///OUT/study.db)")
    parser.add_argument("--study", default="ratio-search", help="study name")
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep each branch's final checkpoint")
    parser.add_argument("--seed", type=int, default=0, help="sampler seed")
    parser.add_argument("--quick", action="store_true", help="20 short trials (see above)")
    parser.set_defaults(accepts_overrides=True)


def _floats(text: str, name: str) -> list[float]:
    from xmodel2.errors import UserError

    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{name}: expected comma-separated numbers, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    from xmodel2.data.sft import bundled_sft_files, parse_sft_file_spec
    from xmodel2.ratio_search.search import SearchOptions, run_search
    from xmodel2.train.runconfig import load_run_config

    overrides = list(args.overrides)
    if args.quick:
        overrides = ["--data.validation_sequences=16", *overrides]
    run_config = load_run_config(args.config, overrides)
    options = SearchOptions(
        sft_files=[parse_sft_file_spec(s) for s in args.sft] if args.sft else bundled_sft_files(),
        checkpoint=Path(args.checkpoint) if args.checkpoint else None,
        stable_steps=args.stable_steps or (240 if args.quick else None),
        held_out_percent=args.held_out_percent, sampler=args.sampler, trials=args.trials,
        workers=args.workers, device=args.device, heartbeat=args.heartbeat,
        decay_steps=args.decay_steps or (16 if args.quick else None),
        half_life=args.half_life, objective=args.objective, eval_tasks=args.eval_tasks,
        eval_limit=args.eval_limit, storage=args.storage, study=args.study,
        sft_sequences=32 if args.quick else 64, keep_checkpoints=args.keep_checkpoints, seed=args.seed)
    if args.shares:
        options.shares = _floats(args.shares, "--shares")
    if args.mixes:
        options.mixes = [m.strip() for m in args.mixes.split(",") if m.strip()]
    summary = run_search(run_config, Path(args.out), options)
    weights = ", ".join(f"{c} {w:.0%}" for c, w in summary["best_weights"].items())
    print(f"best SFT share: {summary['best_share']:.0%} (mix {summary['best_label']}: {weights}), "
          f"objective {summary['best_value']:.4f} over {summary['trials']} trials")
    interval = summary["share_interval"]
    if interval is not None:
        print(f"best SFT share from a quadratic fit: {interval.estimate:.0%}, {interval.confidence:.0%} "
              f"CI {interval.low:.0%}-{interval.high:.0%} (bootstrap over the {summary['trials']} trials); "
              f"{interval.report_range_verdict()}")
    print(f"plot: {summary['plot']}\nbest mixture config: {summary['config']}")
    return 0
