"""A run's metrics: the sinks on rank 0 (``metrics.jsonl`` always, TensorBoard and Weights & Biases when
configured) and the reader of ``metrics.jsonl`` that every report and tool uses.

The record schema: one JSON object a line. A ``run`` header names the domains and the hashes of the data,
tokenizer and validation set; then ``train``, ``eval`` and optionally ``lm_eval`` records keyed by ``step``,
and a ``resume`` record where a run resumed. A resumed run may log a step again; the later record wins, and it
also drops the records of that kind logged after it by the interrupted attempt (they describe a trajectory the
resumed run did not follow). Tables and plots over runs: ``neox.reports``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from neox.config import LoggingConfig
from neox.files import atomic_write_text

METRICS_FILE = "metrics.jsonl"


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
        self.path = run_dir / METRICS_FILE
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


# ---------------------------------------------------------------------------------------------- reading


class RunReadError(ValueError):
    """A run directory that cannot be read: the message names the directory and what is missing."""


@dataclass
class RunMetrics:
    """The records of one run, deduplicated and sorted by step."""

    run_dir: Path
    name: str
    header: dict[str, Any]
    train: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    lm_evals: list[dict[str, Any]] = field(default_factory=list)

    @property
    def domains(self) -> list[str]:
        domains = self.header.get("domains")
        if domains:
            return list(domains)
        # No header domains (an old or hand-written file): fall back to the eval keys, in order seen.
        seen: dict[str, None] = {}
        for rec in self.evals:
            for key in rec:
                if key.startswith("val_ppl/") and key not in ("val_ppl/mean", "val_ppl/weighted"):
                    seen[key.split("/", 1)[1]] = None
        return list(seen)

    def eval_series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one eval metric, skipping records that lack it."""
        return _series(self.evals, key)

    def train_series(self, key: str) -> tuple[list[int], list[float]]:
        return _series(self.train, key)

    def mean_val_ppl(self, rec: dict[str, Any]) -> float:
        """The record's unweighted mean of per-domain perplexity (recomputed if the key is missing)."""
        if "val_ppl/mean" in rec:
            return _num(rec["val_ppl/mean"])
        values = [_num(rec[f"val_ppl/{d}"]) for d in self.domains if f"val_ppl/{d}" in rec]
        if not values:
            raise RunReadError(
                f"{self.run_dir}: eval record at step {rec.get('step')} has neither val_ppl/mean nor "
                f"per-domain val_ppl/<domain> values")
        return sum(values) / len(values)

    def mean_val_ppl_series(self) -> tuple[list[int], list[float]]:
        steps, values = [], []
        for rec in self.evals:
            if "val_ppl/mean" in rec or any(k.startswith("val_ppl/") for k in rec):
                steps.append(int(rec["step"]))
                values.append(self.mean_val_ppl(rec))
        return steps, values

    @property
    def final_eval(self) -> dict[str, Any]:
        if not self.evals:
            raise RunReadError(
                f"{self.run_dir}/{METRICS_FILE} has no eval records (kind 'eval'); the run has not reached "
                f"its first validation yet, or validation is disabled (eval.interval_steps)")
        return self.evals[-1]


def _series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    steps = [int(r["step"]) for r in records if key in r]
    values = [_num(r[key]) for r in records if key in r]
    return steps, values


def _num(value: Any) -> float:
    # The trainer writes a NaN metric as null (JSON has no NaN); plots show it as a gap.
    return math.nan if value is None else float(value)


def _dedupe(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records of one kind in file order -> one record per step, later record wins.

    A step logged again means the run resumed from an earlier checkpoint: what the interrupted attempt
    logged at or after that step is superseded, so it is dropped (not merely the identical steps).
    """
    kept: list[dict[str, Any]] = []
    for rec in records:
        step = int(rec["step"])
        while kept and int(kept[-1]["step"]) >= step:
            kept.pop()
        kept.append(rec)
    return kept


def read_run(run_dir: str | os.PathLike[str], name: str | None = None) -> RunMetrics:
    """Read RUN_DIR/metrics.jsonl. Raises RunReadError for a missing or unreadable file."""
    run_dir = Path(run_dir)
    path = run_dir / METRICS_FILE
    if not run_dir.is_dir():
        raise RunReadError(f"run directory {run_dir} does not exist")
    if not path.is_file():
        raise RunReadError(
            f"{run_dir} has no {METRICS_FILE}; pass a run directory written by train.py "
            f"(the one that holds config.yml and checkpoints/)")
    header: dict[str, Any] = {}
    by_kind: dict[str, list[dict[str, Any]]] = {"train": [], "eval": [], "lm_eval": []}
    lines = path.read_text().splitlines()
    last_line_no = max((i for i, line in enumerate(lines, 1) if line.strip()), default=0)
    for line_no, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            # The trainer may be killed mid-write: a torn last line is expected, anything else is not.
            if line_no == last_line_no:
                break
            raise RunReadError(f"{path}:{line_no} is not valid JSON ({e})") from None
        kind = rec.get("kind")
        if kind == "run":
            # A resumed run writes its header again; the latest one describes the run as it is.
            header.update(rec)
        elif kind in by_kind:
            if "step" not in rec:
                raise RunReadError(f"{path}:{line_no}: a '{kind}' record without 'step'")
            by_kind[kind].append(rec)
        # Unknown kinds are skipped: the trainer may add record kinds this reader does not plot.
    run_name = name or header.get("run_name") or run_dir.resolve().name
    return RunMetrics(
        run_dir=run_dir, name=str(run_name), header=header,
        train=_dedupe(by_kind["train"]), evals=_dedupe(by_kind["eval"]), lm_evals=_dedupe(by_kind["lm_eval"]))
