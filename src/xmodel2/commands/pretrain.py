"""`xmodel2 pretrain`: train a μP model with the WSD schedule through its stages."""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

HELP = """Pretrain a model: tokenizer, shards, then the stable and decay stages.

With no arguments it runs the embedded default (a nano-class μP model on the bundled corpus,
on CPU, in minutes) and ends with a sample, held-out perplexity and OUT/loss.png.
Any config key can be overridden: --train.steps=2000 --train.seed=1 --checkpoint.every=100
--train.lr=0.02 --model.preset=tiny --data.seq_len=512 ... The default's stages, warmup and decay
half-life are fractions of the run, so --train.steps=N alone scales it (any N >= 2), and its
micro-batch (train.micro_batch_size: auto) follows the global batch and the number of ranks.
Re-running the same command resumes from the newest complete checkpoint in OUT/checkpoints/.

--dry-run trains nothing: it checks the config for --nproc ranks and prints the plan (batch ramp,
steps and tokens per stage and in total, the LR at each stage's first and last step, the steps that
checkpoint, each source's budget against shards already in OUT/data) and writes each stage's
mixture as OUT/mixture.png. A batch that does not split, or any other config error, is one line
and exit 2 with no plan. Input paths that do not exist (a recipe's placeholders) and budgets that
prepared shards cannot serve are listed under "problems" after the full plan, and the exit
status is then 2; 0 means the run could start as configured.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="run config YAML (default: the embedded default)")
    parser.add_argument("--out", default=None,
                        help="output folder (default: runs/<config name>)")
    parser.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                        help="branch from a checkpoint folder (weights, optimizer and step) into --out")
    parser.add_argument("--set-from", action="append", default=[], metavar="FRAGMENT.yaml",
                        help="merge a config fragment (e.g. windtunnel search's best_config.yaml or "
                             "ratio-search's best mixture) into the config; repeatable")
    parser.add_argument("--dry-run", action="store_true",
                        help="check and print the plan, write OUT/mixture.png, train nothing (see above)")
    parser.add_argument("--nproc", type=int, default=1, metavar="N",
                        help="ranks the --dry-run plan splits each batch over (default 1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-finish", action="store_true",
                        help="skip the final sample, perplexity and plot")
    parser.set_defaults(accepts_overrides=True)


def run(args: argparse.Namespace) -> int:
    from xmodel2.errors import UserError
    from xmodel2.train.hardware import pick_device
    from xmodel2.train.run import check_run, run_pretraining
    from xmodel2.train.runconfig import load_run_config

    run_config = load_run_config(args.config, args.overrides, fragments=args.set_from)
    name = Path(args.config).stem if args.config else "default"
    out_dir = Path(args.out) if args.out else Path("runs") / name
    if args.nproc != 1 and not args.dry_run:
        raise UserError(f"--nproc {args.nproc}: only --dry-run takes it; a run gets its ranks from torchrun")
    if args.dry_run:
        return dry_run(run_config, out_dir, args.nproc, Path(args.config).name if args.config else name)
    # Everything that can be refused is, before the run folder is made or any work starts.
    check_run(run_config, out_dir, args.init_from, pick_device(run_config.train.device),
              world=int(os.environ.get("WORLD_SIZE", "1")))
    started = time.perf_counter()
    result = run_pretraining(run_config, out_dir, init_from=args.init_from,
                             show_progress=not args.no_progress)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports (the group is gone)
        return 0
    if not args.no_finish:
        finish(run_config, result)
    print(f"finished in {time.perf_counter() - started:.0f} s; model folder: {result.final_checkpoint}")
    return 0


def dry_run(run_config, out_dir: Path, nproc: int, config_name: str) -> int:
    from xmodel2.folders import claim_run_folder
    from xmodel2.planning.dry_run import dry_run_plan, plan_text, problems_text
    from xmodel2.planning.mixture_chart import draw_mixtures

    plan = dry_run_plan(run_config, out_dir, nproc)
    print(plan_text(plan, config_name))
    # Claiming the folder refuses one pretrain would refuse, and marks a new one as this run's.
    with claim_run_folder(out_dir):
        png = draw_mixtures([(s.name, s.tokens, s.sources) for s in plan.stages], out_dir / "mixture.png",
                            title=f"data mixture per stage: {config_name}")
    print(f"mixture per stage: {png}")
    print(problems_text(plan))
    return 2 if plan.problems else 0


def finish(run_config, result) -> None:
    """Print a sample and held-out perplexity; write OUT/loss.png."""
    import torch

    from xmodel2.model.folder import load_model_folder
    from xmodel2.train.hardware import pick_device
    from xmodel2.train.plots import plot_loss_curve
    from xmodel2.train.run import held_out_perplexity
    from xmodel2.train.sizing import settle_micro_batch

    device = pick_device(run_config.train.device)
    # The held-out text is scored in micro-batches, here in this one process.
    run_config = settle_micro_batch(run_config, device, out_dir=result.out_dir)
    model = load_model_folder(result.final_checkpoint, device=device)
    if result.val_loss_end is not None:
        start = f"{result.val_loss_start:.3f} → " if result.val_loss_start is not None else ""
        print(f"validation loss: {start}{result.val_loss_end:.3f}")
    if run_config.data.test is not None:
        shard = result.out_dir / "data" / run_config.data.test
        ppl = held_out_perplexity(model, run_config, shard, device)
        print(f"held-out perplexity ({run_config.data.test}): {ppl:.2f} "
              f"(loss {math.log(ppl):.3f} nats/token)")
    from xmodel2.model.generate import generate
    from xmodel2.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(result.final_checkpoint)
    with torch.inference_mode():
        text = generate(model, tokenizer, [run_config.finish.sample_prompt],
                        max_new_tokens=run_config.finish.sample_tokens,
                        temperature=run_config.finish.sample_temperature,
                        top_k=run_config.finish.sample_top_k, seed=run_config.train.seed)[0]
    print(f"sample: {run_config.finish.sample_prompt}{text}")
    png = plot_loss_curve(result.out_dir / "metrics.jsonl", result.out_dir / "loss.png",
                          title=f"xmodel2 pretrain: {result.out_dir.name}",
                          stage_starts=stage_start_tokens(run_config))
    print(f"loss curve: {png}")


def stage_start_tokens(run_config) -> dict[str, int]:
    from xmodel2.train.sizing import batch_schedule

    batches, starts, step = batch_schedule(run_config), {}, 0
    for stage, steps in zip(run_config.stages, run_config.stage_steps()):
        starts[stage.name] = batches.offset(step) * run_config.data.seq_len
        step += steps
    return starts
