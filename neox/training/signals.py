"""SIGINT / SIGTERM: finish the step, save, stop with one line (docs/design.md, "Checkpoints and signals").

The first SIGINT or SIGTERM only raises a flag; the loop finishes its step, the ranks agree (one MAX
all-reduce of the flag, since a signal can reach the ranks of a job at different steps), every rank saves the
same checkpoint and the run raises ``TrainingInterrupted``. A second Ctrl-C (SIGINT) exits at once. A launcher
(torchrun, deepspeed) forwards the terminal's Ctrl-C to its workers, which therefore see the same Ctrl-C twice
within milliseconds: a SIGINT less than ``same_press_s`` after the first counts as the same press.

Once the checkpoint is saved, the process group torn down and the line printed, ``exit_now`` leaves the process
without the interpreter's teardown. A launcher gives its workers a grace period after forwarding a signal
(torchrun: 30 s, then SIGKILL) and a scheduler gives one before preemption; the teardown (a full garbage
collection of torch's and DeepSpeed's heap, module teardown, atexit handlers) is ~1 s of CPU, which on a busy
machine becomes more than that grace period: the workers of a 2-process run were SIGKILLed after saving.
Nothing is lost by skipping it: the state is on disk and the files are closed.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import NoReturn

import torch
import torch.distributed as dist

HANDLED = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):
    """Raised by ``Trainer.fit`` after the checkpoint of an interrupted run is saved."""

    def __init__(self, signum: int, step: int, checkpoint) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; saved {checkpoint}; "
                         f"continue with checkpoint.resume=auto")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class StopSignals:
    """Context manager: installs the handlers (main thread only) and restores the previous ones on exit."""

    def __init__(self, same_press_s: float = 0.5) -> None:
        self.signum = 0
        self._first_at = 0.0
        self._same_press_s = same_press_s
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        now = time.monotonic()
        if not self.signum:
            self.signum, self._first_at = signum, now
            _say(f"{signal.Signals(signum).name}: finishing the step, saving a checkpoint, then stopping "
                 f"(Ctrl-C again to stop at once, without saving)")
        elif signum == signal.SIGINT and now - self._first_at > self._same_press_s:
            _say("second Ctrl-C: stopping at once; the last saved checkpoint is the one to resume from")
            os._exit(128 + signal.SIGINT)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in HANDLED:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def agreed(self, device: torch.device) -> int:
        """The signal any rank received (0: none). Collective when the job has several processes."""
        if not (dist.is_initialized() and dist.get_world_size() > 1):
            return self.signum
        flag = torch.tensor([self.signum], dtype=torch.int64, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())


def exit_now(code: int) -> NoReturn:
    """End the process with ``code`` at once: flush Python's streams and logging handlers, then ``os._exit``
    (no garbage collection, no module teardown, no atexit handlers, no C++ static destructors racing gloo's
    threads). Only once everything worth keeping is written and closed."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can be said there anyway
            pass
    os._exit(code)


def _say(message: str) -> None:
    # os.write, not print: a handler that runs while the main thread is inside a print would re-enter it.
    os.write(2, (message + "\n").encode())
