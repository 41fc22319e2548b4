"""Metric sinks on rank 0: ``metrics.jsonl`` always, TensorBoard and Weights & Biases when configured."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from neox.config import LoggingConfig
from neox.files import atomic_write_text


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (1e308 if value > 0 else -1e308)
    return value


def _step_of(line: str) -> int | None:
    """The step of a metrics.jsonl line; -1 for a torn (half-written) line, None for step-less records."""
    try:
        return json.loads(line).get("step")
    except ValueError:
        return -1


class MetricsWriter:
    """``resume_step``: the run resumes from a checkpoint at this step; records past it (steps that are about to
    be trained again) and a torn last line are moved to ``metrics.replaced.jsonl``, so metrics.jsonl keeps one
    record per step, and TensorBoard purges its events past that step; -1: the run starts over (stopped before its
    first checkpoint), every record with a step goes."""

    def __init__(self, run_dir: Path, cfg: LoggingConfig, config_dict: dict[str, Any],
                 resume_step: int | None = None) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.dropped_records = 0
        if resume_step is not None and self.path.exists():
            self._drop_after(resume_step)
        self._file = self.path.open("a", buffering=1)  # line-buffered: a crash loses at most one record
        self._tb = None
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is a core dependency; say so rather than silently dropping it
                raise RuntimeError("logging.tensorboard=true needs the tensorboard package: pip install tensorboard")
            purge = None if resume_step is None else resume_step + 1  # events at steps > resume_step go
            self._tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge)
        self._wandb = None
        if cfg.wandb_project:
            try:
                import wandb
            except ImportError:
                raise RuntimeError(f"logging.wandb_project={cfg.wandb_project!r} needs Weights & Biases: "
                                   f"pip install wandb (or unset logging.wandb_project)") from None

            self._wandb = wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name, config=config_dict,
                                     dir=str(run_dir), resume="allow")

    def _drop_after(self, step: int) -> None:
        keep, drop = [], []
        for line in self.path.read_text().splitlines():
            at = _step_of(line)
            (drop if at == -1 or (at is not None and at > step) else keep).append(line)
        if not drop:
            return
        with (self.path.parent / "metrics.replaced.jsonl").open("a") as f:
            f.write("".join(line + "\n" for line in drop))
        atomic_write_text(self.path, "".join(line + "\n" for line in keep))
        self.dropped_records = len(drop)

    @property
    def is_new(self) -> bool:
        return self.path.stat().st_size == 0

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        step = record.get("step")
        scalars = {k: v for k, v in record.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "kind")}
        if step is None or not scalars:
            return
        prefix = {"eval": "", "train": "train/", "lm_eval": "lm_eval/"}.get(record.get("kind"), "")
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key if "/" in key else prefix + key, value, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
