"""Pretrain a GPT-NeoX / Pythia model with an online data mixture.

    deepspeed train.py configs/pythia_410m_acodm.yml
    torchrun --nproc_per_node 2 train.py configs/demo_cpu.yml
    python train.py configs/demo_cpu.yml schedule.train_steps=50 checkpoint.resume=auto

Arguments after the config are dotted overrides (``key.sub=value``, values parsed as YAML).
"""

from __future__ import annotations

import argparse
import sys

from neox.config import ConfigError, load_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="experiment YAML (see configs/)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None,
                        help=argparse.SUPPRESS)  # passed by the deepspeed launcher; LOCAL_RANK is read instead
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, exit_when_interrupted: bool = False) -> int:
    """The exit code. ``exit_when_interrupted``: after SIGINT/SIGTERM (checkpoint saved, line printed, process
    group torn down) end the process at once, skipping the interpreter's teardown, so that every rank is gone
    well within a launcher's or scheduler's grace period (``signals.exit_now``)."""
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    import torch.distributed as dist

    from neox.data import DataFileError
    from neox.training.checkpoint import CheckpointError
    from neox.training.ds_ops import OpBuildError
    from neox.training.signals import TrainingInterrupted, exit_now
    from neox.training.trainer import Trainer  # deferred: torch/deepspeed imports are slow

    # Start-up problems with the user's inputs (data, tokenizer, actor, run directory, checkpoints) are one line
    # and exit code 2, like config errors; anything else keeps its traceback (a bug).
    user_errors = (DataFileError, CheckpointError, FileNotFoundError, FileExistsError, OpBuildError)
    stopped_by_signal = None
    try:
        try:
            trainer = Trainer(cfg)
        except ConfigError as e:  # found at start-up: a layout that does not fit the world size, a checkpoint's layout
            return _fail(f"config error: {e}", 2)
        except user_errors as e:
            return _fail(f"error: {e}", 2)
        except KeyboardInterrupt:
            return _fail("interrupted during start-up; nothing was trained", 130)
        try:
            trainer.fit()
        except TrainingInterrupted as e:
            stopped_by_signal = e.exit_code
            return _fail(str(e), e.exit_code)
    finally:
        # Tear the process group down before the interpreter exits: gloo's threads otherwise race the
        # exit and a rank can abort ("terminate called without an active exception") after a good run.
        if dist.is_initialized():
            dist.destroy_process_group()
            from neox.training.ds_ops import remove_shm_buffer

            remove_shm_buffer()
        if stopped_by_signal is not None and exit_when_interrupted:
            exit_now(stopped_by_signal)
    return 0


def _fail(message: str, code: int) -> int:
    """One line from the job's first rank (every rank of a multi-process job hits the same error)."""
    import os

    if os.environ.get("RANK", "0") == "0":
        print(message, file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main(exit_when_interrupted=True))
