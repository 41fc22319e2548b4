"""Everything optional in the loop plugs in here: mixing, evaluation, metrics, checkpoints.

Each callback sees the trainer at the start, after every optimizer step (with the step's all-reduced
statistics and the metrics record being assembled for that step) and at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

from acodm.mixers.base import StepStats
from neox.training.checkpoint import save_checkpoint
from neox.training.stats import ReducedStats

if TYPE_CHECKING:
    from neox.training.trainer import Trainer


class Callback:
    def on_fit_start(self, trainer: "Trainer") -> None:
        pass

    def post_step(self, trainer: "Trainer", stats: ReducedStats, record: dict[str, Any]) -> None:
        pass

    def on_fit_end(self, trainer: "Trainer") -> None:
        pass


class MixingCallback(Callback):
    """The mixer observes the step on rank 0; its weights are broadcast and, every
    ``mixing.update_interval_steps`` steps, handed to the data plan for the next segment."""

    def post_step(self, trainer: "Trainer", stats: ReducedStats, record: dict[str, Any]) -> None:
        interval = trainer.cfg.mixing.update_interval_steps
        weights = np.zeros(trainer.num_domains, dtype=np.float64)
        norms = None if stats.nonfinite else trainer.step_probe_norms  # read before the update
        if trainer.topology.is_main:
            if stats.nonfinite:
                record["mixer/skipped_nonfinite"] = 1.0  # the mixer never sees a step that was not applied
            else:
                record.update(trainer.mixer.observe(mixer_step_stats(trainer, stats, norms, record["lr"])))
            weights = np.asarray(trainer.mixer.weights(), dtype=np.float64)
        if trainer.step % interval == 0:
            trainer.set_weights(broadcast_weights(weights, trainer.device))


def mixer_step_stats(trainer: "Trainer", stats: ReducedStats, norms: np.ndarray | None, lr: float) -> StepStats:
    """What the mixer sees of a step: the training domains' statistics, the weights the batch was drawn
    with (``trainer.weights``, replaced only after this) and each domain's alignment with the targets."""
    K = trainer.num_domains
    target = mask = None
    if stats.gram is not None:
        targets = trainer.cfg.mixing.target_domains
        if targets:
            # Statistics index training domains then probed target-only ones: the target direction is the
            # sum of the targets' gradients wherever they sit.
            target = stats.gram[:K, [trainer.val_domains.index(d) for d in targets]].mean(axis=1)
            mask = np.array([d in targets for d in trainer.domains], dtype=np.float64)
    return StepStats(step=trainer.step, total_steps=trainer.total_steps, probe_norms=norms,
                     weights=trainer.weights.copy(), target_alignment=target,
                     num_targets=len(trainer.cfg.mixing.target_domains or []) or None, target_mask=mask, lr=lr,
                     **stats.training_domains(K))


def broadcast_weights(weights: np.ndarray, device: torch.device) -> np.ndarray:
    """Rank 0's K weights to every rank (the plan must agree everywhere)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return weights
    t = torch.as_tensor(weights, dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return t.cpu().numpy()


class EvalCallback(Callback):
    def __init__(self) -> None:
        self._last_eval_step = -1

    def _run(self, trainer: "Trainer") -> None:
        if trainer.step == self._last_eval_step:
            return
        self._last_eval_step = trainer.step
        record = {"kind": "eval", "step": trainer.step, "tokens": trainer.tokens, **trainer.evaluate()}
        if trainer.metrics is not None:
            trainer.metrics.write(record)
            trainer.console(f"eval step {trainer.step}: val_ppl/mean {record['val_ppl/mean']:.3f}  "
                            f"val_loss/mean {record['val_loss/mean']:.4f}")

    def on_fit_start(self, trainer: "Trainer") -> None:
        if trainer.cfg.eval.at_start and trainer.step == 0:
            self._run(trainer)

    def post_step(self, trainer: "Trainer", stats: ReducedStats, record: dict[str, Any]) -> None:
        interval = trainer.cfg.eval.interval_steps
        if interval and trainer.step % interval == 0:
            self._run(trainer)

    def on_fit_end(self, trainer: "Trainer") -> None:
        self._run(trainer)


class MetricsCallback(Callback):
    """metrics.jsonl / TensorBoard / W&B on rank 0, and a progress bar with loss, tokens/s and ETA."""

    def __init__(self) -> None:
        self._bar = None

    def on_fit_start(self, trainer: "Trainer") -> None:
        if trainer.topology.is_main and trainer.cfg.logging.progress_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=trainer.total_steps, initial=trainer.step, desc=trainer.cfg.name,
                             unit="step", dynamic_ncols=True, mininterval=1.0)

    def post_step(self, trainer: "Trainer", stats: ReducedStats, record: dict[str, Any]) -> None:
        if trainer.metrics is None:
            return
        trainer.metrics.write(record)
        if self._bar is not None:
            self._bar.update(1)
            if trainer.step % trainer.cfg.logging.log_interval_steps == 0:
                self._bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}",
                                      refresh=False)
        elif trainer.step % trainer.cfg.logging.log_interval_steps == 0:
            trainer.console(f"step {trainer.step}/{trainer.total_steps} loss {record['loss']:.4f} "
                            f"lr {record['lr']:.3g} tok/s {record['tokens_per_s']:.0f}")

    def on_fit_end(self, trainer: "Trainer") -> None:
        if self._bar is not None:
            self._bar.close()


def run_on_main_then_wait(fn: Callable[[], Any], is_main: bool, wait_group: Any) -> Any:
    """``fn()`` on the main rank while every other rank waits at a barrier of ``wait_group`` (a gloo group
    with a timeout long enough for ``fn``), so that no rank sits in a training collective, whose timeout is
    short (NCCL's 10 minutes), while the main rank works alone. The main rank joins the barrier even when
    ``fn`` raises, so the others are released and the error surfaces on the rank that has it."""
    try:
        return fn() if is_main else None
    finally:
        if wait_group is not None:
            dist.barrier(group=wait_group)


def long_wait_group(timeout_s: float) -> Any:
    """A gloo group over every rank whose collectives time out after ``timeout_s`` (a collective call on every
    rank); None in a world of one."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return None
    return dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))


class CheckpointCallback(Callback):
    def __init__(self) -> None:
        self._last_saved = -1
        self._last_path = None
        self._lm_eval_wait_group = None

    def on_fit_start(self, trainer: "Trainer") -> None:
        if trainer.cfg.eval.lm_eval_tasks:
            # A margin over the evaluation's own timeout, after which rank 0 stops it and comes to the barrier.
            self._lm_eval_wait_group = long_wait_group(trainer.cfg.eval.lm_eval_timeout_s + 600)

    def _save(self, trainer: "Trainer"):
        """The checkpoint of the current step (written now unless it already was)."""
        if trainer.step == self._last_saved:
            return self._last_path
        started = time.perf_counter()
        path = save_checkpoint(trainer)
        self._last_saved, self._last_path = trainer.step, path
        trainer.console(f"saved checkpoint {path} in {time.perf_counter() - started:.1f}s")
        if trainer.cfg.eval.lm_eval_tasks:
            run_on_main_then_wait(lambda: self._lm_eval(trainer, path), trainer.topology.is_main,
                                  self._lm_eval_wait_group)
        return path

    @staticmethod
    def _lm_eval(trainer: "Trainer", path) -> None:
        """lm-eval on the checkpoint just written (rank 0; the other ranks wait in ``run_on_main_then_wait``)."""
        from neox.evaluation.lm_eval_runner import EvalError, lm_eval_record, run_lm_eval_isolated

        ev = trainer.cfg.eval
        try:
            # A child process: lm-eval in this one would join the training job's process group.
            result = run_lm_eval_isolated(path, ev.lm_eval_tasks, limit=ev.lm_eval_limit,
                                          include_path=ev.lm_eval_include_path, device=str(trainer.device),
                                          timeout_s=ev.lm_eval_timeout_s)
        except EvalError as e:  # a missing dataset must not end a training run
            trainer.console(f"lm-eval at step {trainer.step} skipped: {e}")
            return
        record = {"kind": "lm_eval", "step": trainer.step, "tokens": trainer.tokens, **lm_eval_record(result)}
        trainer.metrics.write(record)
        trainer.console("lm-eval: " + ", ".join(f"{k} {v:.4f}" for k, v in record.items() if "/" in k))

    def post_step(self, trainer: "Trainer", stats: ReducedStats, record: dict[str, Any]) -> None:
        interval = trainer.cfg.checkpoint.interval_steps
        if interval and trainer.step % interval == 0:
            self._save(trainer)

    def on_fit_end(self, trainer: "Trainer") -> None:
        if trainer.cfg.checkpoint.save_final:
            self._save(trainer)

    def save_now(self, trainer: "Trainer"):
        return self._save(trainer)
