"""run_distributed(fn, world_size, *args): run ``fn(rank, world_size, *args)`` in N processes on gloo.

Each child is a fresh ``spawn`` process with RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE /
MASTER_ADDR / MASTER_PORT set (so ``deepspeed.init_distributed`` and ``init_process_group("env://")``
work) and ``torch.distributed`` already initialised on gloo. ``fn`` must be importable by name (a
module-level function of a test module or helper). The return values, one per rank in rank order, come
back through plain pickling (tensors by value). An exception in any child fails the caller with the
child's traceback; a child that dies without reporting, or a run past ``timeout_s``, also fails, and
all children are killed.

    from distributed import run_distributed
    results = run_distributed(my_fn, 2, arg1, timeout_s=60)
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import socket
import time
import traceback
from collections.abc import Callable
from typing import Any


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1 (tiny race with other binders; good enough for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _child(rank: int, world_size: int, port: int, fn: Callable[..., Any], args: tuple, results: Any) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
                       "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    try:
        import torch.distributed as dist

        dist.init_process_group("gloo", rank=rank, world_size=world_size)
        try:
            value = fn(rank, world_size, *args)
        finally:
            dist.destroy_process_group()
        # Plain pickle, not the multiprocessing pickler: tensors travel by value, not as shared memory
        # that would vanish with the child.
        results.put((rank, True, pickle.dumps(value)))
    except BaseException:  # noqa: BLE001 - every failure must reach the parent as a test failure
        results.put((rank, False, traceback.format_exc()))


def run_distributed(fn: Callable[..., Any], world_size: int, *args: Any, timeout_s: float = 120.0) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` gloo processes; return their results by rank."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_child, args=(r, world_size, port, fn, args, results), daemon=True)
             for r in range(world_size)]
    for p in procs:
        p.start()
    done: dict[int, Any] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(done) < world_size:
            try:
                rank, ok, payload = results.get(timeout=0.2)
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"run_distributed({fn.__name__}, {world_size}): ranks "
                                       f"{sorted(set(range(world_size)) - set(done))} did not finish in {timeout_s} s")
                dead = [r for r, p in enumerate(procs) if r not in done and p.exitcode not in (None, 0)]
                if dead:
                    # Give a dying child's queued report a moment to arrive before blaming the exit code.
                    try:
                        rank, ok, payload = results.get(timeout=1.0)
                    except queue.Empty:
                        raise RuntimeError(f"run_distributed({fn.__name__}): rank {dead[0]} exited with code "
                                           f"{procs[dead[0]].exitcode} without reporting") from None
                else:
                    continue
            if not ok:
                raise RuntimeError(f"run_distributed({fn.__name__}): rank {rank} failed:\n{payload}")
            done[rank] = pickle.loads(payload)
    finally:
        for p in procs:
            p.join(timeout=5.0 if len(done) == world_size else 0.1)
            if p.is_alive():
                p.kill()
                p.join()
    return [done[r] for r in range(world_size)]
