"""Pretrain a GPT-NeoX / Pythia model with an online data mixture.

    deepspeed train.py configs/pythia_410m_acodm.yml
    torchrun --nproc_per_node 2 train.py configs/demo_cpu.yml
    python train.py configs/demo_cpu.yml schedule.train_steps=50 checkpoint.resume=auto
    python train.py configs/pythia_410m_acodm.yml --print-config   # resolved config + DeepSpeed config, JSON

Arguments after the config are dotted overrides (``key.sub=value``, values parsed as YAML).
"""

from __future__ import annotations

import argparse
import sys

from neox.config import load_config
from neox.errors import ConfigError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="experiment YAML (see configs/)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None,
                        help=argparse.SUPPRESS)  # passed by the deepspeed launcher; LOCAL_RANK is read instead
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config and the DeepSpeed config derived from it as JSON, then exit "
                             "(the world size is WORLD_SIZE, default 1; nothing is started or read)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, exit_at_once: bool = False) -> int:
    """The exit code. ``exit_at_once``: once a distributed run has ended (checkpoint saved, metrics closed, line
    printed, process group torn down) or a signal stopped it, end the process with that code at once, skipping
    the interpreter's teardown (``signals.exit_now``). Two reasons: a rank must be gone well within a launcher's
    or scheduler's grace period after a signal, and the C++ static destructors that run in that teardown can race
    gloo's threads and abort a rank after a good run ("terminate called without an active exception")."""
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        return print_config(cfg)
    import torch.distributed as dist

    from neox.data import DataFileError
    from neox.training.checkpoint import CheckpointError
    from neox.training.ds_compat import UnsupportedDeepSpeedError, check_deepspeed_version
    from neox.training.ds_ops import OpBuildError
    from neox.training.signals import TrainingInterrupted, exit_now

    try:  # the pipeline step patches DeepSpeed internals checked against one release range
        check_deepspeed_version()
    except UnsupportedDeepSpeedError as e:
        return _fail(f"error: {e}", 2)
    from neox.training.trainer import Trainer  # deferred: torch/deepspeed imports are slow

    # Start-up problems with the user's inputs (data, tokenizer, actor, run directory, checkpoints) are one line
    # and exit code 2, like config errors; anything else keeps its traceback (a bug).
    user_errors = (DataFileError, CheckpointError, FileNotFoundError, FileExistsError, OpBuildError)
    code, stopped_by_signal, distributed = None, False, False
    try:
        try:
            trainer = Trainer(cfg)
        except ConfigError as e:  # found at start-up: a layout that does not fit the world size, a checkpoint's layout
            code = _fail(f"config error: {e}", 2)
        except user_errors as e:
            code = _fail(f"error: {e}", 2)
        except KeyboardInterrupt:
            code = _fail("interrupted during start-up; nothing was trained", 130)
        if code is None:
            try:
                trainer.fit()
                code = 0
            except TrainingInterrupted as e:
                stopped_by_signal = True
                code = _fail(str(e), e.exit_code)
    finally:
        # Tear the process group down before the interpreter exits, on every path (a bug's traceback included).
        if dist.is_initialized():
            distributed = True
            dist.destroy_process_group()
            from neox.training.ds_ops import remove_shm_buffer

            remove_shm_buffer()
    if exit_at_once and (distributed or stopped_by_signal):
        exit_now(code)
    return code


def print_config(cfg) -> int:
    """The resolved config and the DeepSpeed config the engine would get, as one JSON object on stdout."""
    import json
    import os

    import torch

    from neox.training.engine import deepspeed_config

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        dp_size = cfg.check_world_size(world_size)
    except ConfigError as e:
        return _fail(f"config error: {e}", 2)
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    out = {"config": cfg.to_dict(), "deepspeed": deepspeed_config(cfg, dp_size, device),
           "world_size": world_size, "device": device.type}
    print(json.dumps(out, indent=2))
    return 0


def _fail(message: str, code: int) -> int:
    """One line from the job's first rank (every rank of a multi-process job hits the same error)."""
    import os

    if os.environ.get("RANK", "0") == "0":
        print(message, file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main(exit_at_once=True))
