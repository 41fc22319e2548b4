"""Shared by the benchmarks: build a trainer on synthetic domains in this process and time its steps."""

from __future__ import annotations

import atexit
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def temporary_directory(prefix: str) -> Path:
    """A temporary directory removed when the benchmark's process exits."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def synthetic_data(num_domains: int, vocab_size: int, docs_per_domain: int = 200, mean_doc_tokens: int = 512) -> Path:
    """Random-token domains for a benchmark (kept in a temporary directory for the process's life)."""
    from tests.synthetic_data import write_synthetic_domains

    out = temporary_directory("acodm-bench-") / "tokens"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_synthetic_domains(str(out), num_domains, docs_per_domain, vocab_size, seed=0,
                                mean_doc_tokens=mean_doc_tokens)
    return out


def build_trainer(config: str | Path, overrides: list[str], run_dir: Path | None = None):
    """A Trainer (in this process) for ``config`` with ``overrides``; no progress bar, no checkpoints."""
    from neox.config import load_config
    from neox.training.trainer import Trainer

    run_dir = run_dir or temporary_directory("acodm-bench-run-")
    cfg = load_config(config, [*overrides, f"logging.run_dir={run_dir}", "logging.progress_bar=false",
                               "logging.tensorboard=false", "checkpoint.save_final=false"])
    return Trainer(cfg)


def one_step(trainer) -> float:
    """Seconds for one optimizer step including the mixer's update (what a training step costs)."""
    sync = _sync_fn(trainer.device)
    sync()
    start = time.perf_counter()
    record = {"lr": trainer.scheduler.get_last_lr()[0]}  # the LR in force, as the trainer's step record has it
    stats = trainer.train_step(trainer.loader.next_step())
    trainer.step += 1
    record.update(trainer.mixing.observe(trainer.step, stats, record["lr"]))
    trainer.plan.set_weights(trainer.mixing.weights)
    sync()
    return time.perf_counter() - start


def _sync_fn(device: Any):
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        return torch.cuda.synchronize
    return lambda: None


def interleaved(trainers: dict[str, Any], rounds: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per step of each trainer, timed round-robin so load changes hit all alike."""
    times: dict[str, list[float]] = {name: [] for name in trainers}
    for r in range(warmup + rounds):
        for name, trainer in trainers.items():
            t = one_step(trainer)
            if r >= warmup:
                times[name].append(t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def init_single_process() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
