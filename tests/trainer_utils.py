"""Helpers for tests that run train.py: tiny configs on synthetic domains, subprocess launches, metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from neox.training.metrics import read_run

ROOT = Path(__file__).resolve().parents[1]
DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
            "CROSS_RANK", "CROSS_SIZE", "GROUP_RANK")


def tiny_config(data_dir: Path, run_dir: Path, **sections: Any) -> dict[str, Any]:
    """A 2-layer model on synthetic domains; ``sections`` are merged one level deep."""
    cfg: dict[str, Any] = {
        "name": "tiny", "seed": 7, "device": "cpu",
        "model": {"num_layers": 2, "hidden_size": 64, "num_heads": 4, "vocab_size": 256, "max_seq_len_tokens": 64},
        "data": {"path": str(data_dir), "seq_len_tokens": 32, "global_batch_sequences": 8,
                 "micro_batch_sequences": 2},
        "optimizer": {"lr": 3e-3, "min_lr": 3e-4},
        "schedule": {"train_steps": 6, "warmup_steps": 1},
        "mixing": {"method": "static"},
        "checkpoint": {"interval_steps": 0},
        "logging": {"run_dir": str(run_dir), "tensorboard": False, "progress_bar": False},
        "eval": {"val_samples_per_domain": 4, "interval_steps": 3},
        "deepspeed": {"zero_optimization": {"stage": 1}},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a child launch: no rendezvous variables inherited from an in-process trainer."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.update(extra)
    return env


def run_train(config: Path, *overrides: str, launcher: tuple[str, ...] = (sys.executable,), timeout: float = 300,
              check: bool = True) -> subprocess.CompletedProcess:
    cmd = [*launcher, str(ROOT / "train.py"), str(config), *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    return proc


def read_metrics(run_dir: Path, kind: str = "train") -> list[dict[str, Any]]:
    """Records of ``kind`` ("train", "eval", "lm_eval") as the production reader sees them: one per step,
    a resumed run's later record winning."""
    run = read_run(run_dir)
    return {"train": run.train, "eval": run.evals, "lm_eval": run.lm_evals}[kind]


def train_in_process(config: Path, *overrides: str):
    """Run the trainer in this process (saves the ~8 s start-up of a child); returns the trainer."""
    from neox.config import load_config
    from neox.training.trainer import Trainer

    trainer = Trainer(load_config(config, list(overrides)))
    trainer.fit()
    return trainer


def interrupt_after(run_dir: Path, step: int, later_checkpoints: list[int]) -> None:
    """Make ``run_dir`` look like a run killed right after step ``step``'s checkpoint: later checkpoints
    and metrics records are gone and ``latest`` names step ``step``."""
    import shutil

    ckpts = Path(run_dir) / "checkpoints"
    for s in later_checkpoints:
        shutil.rmtree(ckpts / f"step_{s:08d}")
    (ckpts / "latest").write_text(f"step_{step:08d}\n")
    lines = [line for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
             if json.loads(line).get("step", 0) <= step]
    (Path(run_dir) / "metrics.jsonl").write_text("\n".join(lines) + "\n")
