"""DeepSpeed's CPU shared-memory all-reduce op (``deepspeed_shm_comm``): built once, never waited on forever.

DeepSpeed JIT-compiles this op into ``TORCH_EXTENSIONS_DIR`` on the first distributed start of a CPU run.
torch guards the build with ``<build dir>/lock``, created empty and kept open by the building process; a
build that is killed (a test timeout, Ctrl-C, OOM) leaves the lock behind and every later start waits on
it forever. Because the directory lives under ``$HOME``, one unlucky kill poisons every later run on the
machine. Here, before DeepSpeed loads the op:

- a lock that no live process holds open is stale: it is removed (one line on stderr);
- a lock held by a live process (another job building right now) is waited for at most ``wait_s`` seconds,
  then start-up fails with a message naming the lock, its holder and the fix;
- the op is loaded once per process; DeepSpeed's own load then finds it in its cache and never touches the
  lock again.

``python -m neox.training.ds_ops`` builds it with no timeout (``make setup`` does, so no test ever compiles
it under a test's timeout).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

SHM_OP = "deepspeed_shm_comm"


class OpBuildError(RuntimeError):
    """The op's build directory is locked by a live process for longer than we wait."""


def build_directory(name: str = SHM_OP) -> Path:
    """Where torch builds (and locks) the extension ``name``: TORCH_EXTENSIONS_DIR/name, else torch's default."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root:
        return Path(root) / name
    from torch.utils.cpp_extension import get_default_build_root

    import torch

    accelerator = "cpu" if torch.version.cuda is None and torch.version.hip is None else (
        f"cu{torch.version.cuda.replace('.', '')}" if torch.version.cuda else f"rocm{torch.version.hip.replace('.', '')}")
    python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
    return Path(get_default_build_root()) / f"{python}_{accelerator}" / name


def lock_holders(lock: Path) -> list[int]:
    """PIDs of the processes (that we may inspect) holding ``lock`` open. torch's FileBaton keeps the lock's file
    descriptor open for the whole build, so a lock nobody holds belongs to a build that is gone."""
    target = os.path.realpath(lock)
    holders = []
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            if any(os.readlink(fd) == target for fd in fd_dir.iterdir()):
                holders.append(int(fd_dir.parent.name))
        except OSError:  # the process ended while we looked, or it is another user's
            continue
    return holders


def clear_stale_lock(lock: Path, log=None) -> bool:
    """Remove ``lock`` if it exists and no live process holds it; True if it was removed."""
    if not lock.exists() or lock_holders(lock):
        return False
    try:
        lock.unlink()
    except FileNotFoundError:  # its owner finished just now
        return False
    (log or _stderr)(f"removed stale lock {lock} (left by a killed build of DeepSpeed's {lock.parent.name} op); "
                     f"it is rebuilt now")
    return True


def wait_for_lock(lock: Path, wait_s: float, poll_s: float = 0.5, log=None) -> None:
    """Return once ``lock`` is gone (removing it if its owner dies); raise OpBuildError after ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while lock.exists():
        if clear_stale_lock(lock, log):
            return
        if time.monotonic() > deadline:
            holders = lock_holders(lock)
            raise OpBuildError(
                f"{lock} has been held by process {', '.join(map(str, holders)) or '?'} (building DeepSpeed's "
                f"{lock.parent.name} op) for over {wait_s:.0f} s; wait for that build to finish, or stop it and run "
                f"`make setup` (python -m neox.training.ds_ops) to build the op once")
        time.sleep(poll_s)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _shm_builder():
    """DeepSpeed's builder for the op, or None where DeepSpeed would not load it (CUDA, not Linux, prebuilt)."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator
    from deepspeed.git_version_info import installed_ops

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        return None
    if installed_ops.get(builder.NAME, False):  # compiled into the wheel: no JIT build, no lock
        return None
    return builder


def ensure_shm_op(wait_s: float = 600.0, log=None) -> bool:
    """Load (building if needed) the op the way DeepSpeed would, without ever hanging on a dead build's lock.

    Returns False where DeepSpeed does not use the op. Call it before ``deepspeed.init_distributed``."""
    builder = _shm_builder()
    if builder is None:
        return False
    lock = build_directory(builder.NAME) / "lock"
    wait_for_lock(lock, wait_s, log=log)
    # A build by another process may start and die while torch waits on its lock: a watchdog removes the
    # lock then, torch's wait returns, the import fails (no library) and the load is tried once more.
    done = threading.Event()
    removed: list[bool] = []

    def watchdog() -> None:
        while not done.wait(1.0):
            if lock.exists() and clear_stale_lock(lock, log):
                removed.append(True)

    thread = threading.Thread(target=watchdog, name="shm-op-lock-watchdog", daemon=True)
    thread.start()
    try:
        try:
            builder.load(verbose=False)
        except ImportError:
            if not removed:
                raise
            builder.load(verbose=False)
    finally:
        done.set()
        thread.join()
    return True


def remove_shm_buffer() -> None:
    """Unlink this rank's ``/dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>`` (69 MB each), which
    the op creates for a multi-process CPU job and never removes. Call after the process group is torn down: a
    mapped segment stays valid for whoever still maps it, only the name goes."""
    env = os.environ
    if "MASTER_PORT" not in env or int(env.get("WORLD_SIZE", "1")) < 2:
        return
    name = (f"deepspeed_allreduce_buffer_{os.getuid()}_{env.get('MASTER_ADDR', '')}_{env['MASTER_PORT']}_"
            f"{env.get('RANK', '0')}")
    try:
        os.unlink(f"/dev/shm/{name}")
    except (FileNotFoundError, PermissionError):
        pass


def main() -> int:
    started = time.perf_counter()
    try:
        used = ensure_shm_op(wait_s=float(os.environ.get("ACODM_OP_WAIT_S", "3600")))
    except OpBuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    where = build_directory()
    print(f"DeepSpeed {SHM_OP} op ready in {where} ({time.perf_counter() - started:.1f} s)" if used
          else f"DeepSpeed does not JIT-build {SHM_OP} here (prebuilt, CUDA or not Linux): nothing to do")
    return 0


if __name__ == "__main__":
    sys.exit(main())
