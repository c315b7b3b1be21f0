"""Everything that trains goes through one engine: a wind-tunnel proxy is a run config, and
written out it trains under `xmodel2 pretrain` to the same losses, bit for bit."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import PROXY_VOCAB
from xmodel2.train.engine import build_trainer
from xmodel2.windtunnel.proxy import ProxySettings, prepare_proxy_data, proxy_model, proxy_run_config, train_proxy

SETTINGS = ProxySettings(steps=10, batch_size=4, seq_len=32, eval_every=5, val_sequences=8, precision="fp32",
                         device="cpu", seed=3)
LR = 0.02


def pretrain_losses(config_path: Path, out: Path, *extra: str) -> list[dict]:
    """`xmodel2 pretrain` in a fresh process with the thread count of this one (a different
    count could reorder float sums), logging every step."""
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    command = [sys.executable, "-m", "xmodel2", "pretrain", str(config_path), "--out", str(out),
               "--no-finish", "--no-progress", "--train.log_every=1", *extra]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_proxy_trial_and_pretrain_of_its_config_give_identical_losses(proxy_cache: Path, tmp_path: Path):
    data = prepare_proxy_data(proxy_cache, PROXY_VOCAB)
    config = proxy_model(64, 2, data.vocab_size, SETTINGS.seq_len)
    trial = train_proxy(config, LR, data, SETTINGS)
    assert not trial.diverged and len(trial.train_losses) == SETTINGS.steps

    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(proxy_run_config(config, LR, data, SETTINGS).to_dict()))
    records = pretrain_losses(path, tmp_path / "run")  # prepares its own shards from the corpus files
    train = {r["step"]: r["loss"] for r in records if r["step"] > 0}
    assert [train[step] for step in range(1, SETTINGS.steps + 1)] == trial.train_losses  # bit-identical
    validation = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r and r["step"] > 0]
    assert validation == trial.curve == [(5, trial.curve[0][1]), (10, trial.val_loss)]


def test_the_proxy_trains_with_gradient_accumulation_like_without(proxy_cache: Path):
    data = prepare_proxy_data(proxy_cache, PROXY_VOCAB)
    config = proxy_model(64, 1, data.vocab_size, SETTINGS.seq_len)
    whole = train_proxy(config, LR, data, SETTINGS)
    from dataclasses import replace

    split = train_proxy(config, LR, data, replace(SETTINGS, micro_batch_size=1))
    assert split.train_losses == pytest.approx(whole.train_losses, rel=1e-4)
    assert split.val_loss == pytest.approx(whole.val_loss, rel=1e-4)


def test_an_in_memory_run_writes_nothing(proxy_cache: Path, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = prepare_proxy_data(proxy_cache, PROXY_VOCAB)
    run = proxy_run_config(proxy_model(32, 1, data.vocab_size, 32), LR, data, SETTINGS)
    trainer = build_trainer(run, None, torch.device("cpu"), data.run_data(), validate_at_start=False)
    trainer.run()
    assert trainer.step == SETTINGS.steps and math.isfinite(trainer.tokens)
    assert list(tmp_path.iterdir()) == []
