"""Process start-up that works the same under ``deepspeed``, ``torchrun`` and plain ``python``."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(device_pref: str = "auto") -> DistEnv:
    """Join (or create) the process group. A plain ``python train.py`` becomes a world of one."""
    if "RANK" not in os.environ:  # plain python: a single-process world on loopback
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_pref == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was asked for but CUDA is not available; use device=cpu or device=auto")
    use_cuda = device_pref == "cuda" or (device_pref == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    import deepspeed  # deferred: importing deepspeed is slow and prints accelerator detection

    if not use_cuda:  # DeepSpeed JIT-builds its CPU shared-memory op here; never hang on a killed build's lock
        from neox.training.ds_ops import ensure_shm_op

        ensure_shm_op()

    # Also when torch.distributed is already up (a test harness, an embedding application): DeepSpeed's
    # own comm layer, which the pipeline engine uses, then wraps the existing process group.
    deepspeed.init_distributed(dist_backend="nccl" if use_cuda else "gloo", verbose=False)
    return DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=device)
