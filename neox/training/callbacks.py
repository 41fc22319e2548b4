"""Everything optional in the loop plugs in here: mixing, evaluation, metrics, checkpoints.

Each callback sees the trainer at the start, after every optimizer step (with the step's all-reduced
statistics and the metrics record being assembled for that step) and at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch.distributed as dist

from neox.training.checkpoint import save_checkpoint
from neox.training.stats import ReducedStats

if TYPE_CHECKING:
    from neox.training.mixing import Mixing
    from neox.training.trainer import Trainer


class Callback:
    """A callback with state across steps returns it from ``state_dict`` (saved with the checkpoint, see
    ``CallbackStates``); the default has none."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        pass

    def on_fit_start(self, trainer: "Trainer") -> None:
        pass

    def post_step(self, trainer: "Trainer", stats: ReducedStats, record: dict[str, Any]) -> None:
        pass

    def on_fit_end(self, trainer: "Trainer") -> None:
        pass


class MixingCallback(Callback):
    """The adapter between the loop and the mixing component: the step's reduced statistics go in, the weights
    in force go to the data plan (``MixturePlan.set_weights`` ignores weights it already has)."""

    def __init__(self, mixing: "Mixing") -> None:
        self.mixing = mixing

    def post_step(self, trainer: "Trainer", stats: ReducedStats, record: dict[str, Any]) -> None:
        record.update(self.mixing.observe(trainer.step, stats, record["lr"]))
        trainer.plan.set_weights(self.mixing.weights)


class CallbackStates:
    """The callbacks' states as one stateful part of a checkpoint: each one's ``state_dict`` under its class
    name, the callbacks without state left out."""

    def __init__(self, callbacks: list[Callback]) -> None:
        self.callbacks = callbacks

    def state_dict(self) -> dict[str, dict[str, Any]]:
        return {type(cb).__name__: sd for cb in self.callbacks if (sd := cb.state_dict())}

    def load_state_dict(self, sd: dict[str, dict[str, Any]]) -> None:
        for cb in self.callbacks:
            if type(cb).__name__ in sd:
                cb.load_state_dict(sd[type(cb).__name__])


class EvalCallback(Callback):
    def __init__(self) -> None:
        self._last_eval_step = -1  # a run resumed at a step evaluated before it does not evaluate it again

    def state_dict(self) -> dict[str, Any]:
        return {"last_eval_step": self._last_eval_step}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self._last_eval_step = sd["last_eval_step"]

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
