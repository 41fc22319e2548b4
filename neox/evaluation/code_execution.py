"""HumanEval's functional-correctness check: run model-written code in a child process with a timeout.

This replaces Hugging Face evaluate's `code_eval` metric (which lm-eval's `humaneval` task loads from the Hub,
so it cannot run offline) with the same semantics: the program is `prompt + completion`, then the problem's
`test`, then `check(entry_point)`; it passes if that exits cleanly within the timeout (3 s, as code_eval and
human-eval use). pass@k is the unbiased estimator of Chen et al. 2021 (eq. 1), as code_eval computes it.

Isolation, in the spirit of human-eval's `execution.py` (OpenAI's own harness):
- a fresh `python -I` (isolated mode: no user site, no PYTHON* variables, no cwd on sys.path) in an empty
  temporary directory that is deleted afterwards, with an environment holding only PATH and LANG;
- its own session, so a timeout kills the whole process group (grandchildren included);
- resource limits: address space, CPU seconds, written file size, no core dumps;
- human-eval's `reliability_guard` before the program: the destructive os/shutil/subprocess functions are
  replaced by None, so a stray `os.remove` or `subprocess.run` fails instead of acting.
This is not a security sandbox against deliberately malicious code (neither is human-eval's); run untrusted
models in a container or VM. Execution needs explicit permission (`HF_ALLOW_CODE_EVAL=1`, which
`tools/run_eval.py --allow-code-execution` sets), as code_eval requires.

Public API:
    run_program(program, timeout_s=3.0) -> ExecutionResult
    pass_at_k(references, predictions, k) -> {"pass@k": value}     (the lm-eval metric function)
    build_predictions(resps, docs)                                   (the lm-eval `create_test` filter)
    estimate_pass_at_k(num_samples, num_correct, k) -> float
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

DEFAULT_TIMEOUT_S = 3.0
MEMORY_LIMIT_BYTES = 4 << 30  # human-eval's guard leaves the limit to the caller; 4 GiB stops runaway allocations
FILE_SIZE_LIMIT_BYTES = 16 << 20

# human-eval's reliability_guard (execution.py), applied in the child before the program runs.
_GUARD = '''\
def _acodm_reliability_guard():
    import builtins, faulthandler, os, shutil, subprocess, sys
    faulthandler.disable()
    builtins.exit = None
    builtins.quit = None
    builtins.help = None
    os.environ["OMP_NUM_THREADS"] = "1"
    for name in ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork",
                 "forkpty", "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown",
                 "chmod", "chown", "chroot", "lchflags", "lchmod", "lchown", "getcwd", "chdir"):
        if hasattr(os, name):
            setattr(os, name, None)
    shutil.rmtree = None
    shutil.move = None
    shutil.chown = None
    subprocess.Popen = None
    for name in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[name] = None
_acodm_reliability_guard()
del _acodm_reliability_guard
'''


class CodeExecutionRefusedError(RuntimeError):
    """Model-written code would run without the user's permission."""


@dataclass(frozen=True)
class ExecutionResult:
    passed: bool
    result: str  # "passed", "timed out", or "failed: <last line of stderr>"


def _limit_resources(timeout_s: float) -> None:  # runs in the child between fork and exec
    import resource

    cpu_s = int(timeout_s) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT_BYTES, FILE_SIZE_LIMIT_BYTES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_program(program: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> ExecutionResult:
    """Run `program` in a fresh, guarded Python process; passed iff it exits with 0 within `timeout_s`."""
    with tempfile.TemporaryDirectory(prefix="acodm_exec_") as tmp:
        path = Path(tmp) / "program.py"
        path.write_text(_GUARD + "\n" + program + "\n")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
        proc = subprocess.Popen([sys.executable, "-I", "-B", str(path)], cwd=tmp, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True, preexec_fn=lambda: _limit_resources(timeout_s))
        try:
            _, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            # The program may have started children of its own: end the whole group it leads.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.communicate()
            return ExecutionResult(False, "timed out")
    if proc.returncode == 0:
        return ExecutionResult(True, "passed")
    lines = [ln for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    return ExecutionResult(False, "failed: " + (lines[-1] if lines else f"exit code {proc.returncode}"))


def estimate_pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c pass: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021, eq. 1)."""
    if num_samples - num_correct < k:
        return 1.0
    prod = 1.0
    for i in range(num_samples - num_correct + 1, num_samples + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def _check_permission() -> None:
    if os.environ.get("HF_ALLOW_CODE_EVAL") != "1":
        raise CodeExecutionRefusedError(
            "HumanEval's metric runs the code the model wrote; set HF_ALLOW_CODE_EVAL=1 (tools/run_eval.py "
            "--allow-code-execution does) if you accept that, preferably in a sandbox")


def pass_at_k(references: Sequence[str], predictions: Sequence[Sequence[str]], k: Sequence[int] | int = (1,),
              timeout_s: float = DEFAULT_TIMEOUT_S, num_workers: int = 4) -> dict[str, float]:
    """code_eval's contract: references[i] is a test program, predictions[i] the candidate programs for it.

    Returns {"pass@k": mean over problems} for each k, like `code_eval.compute(...)[0]`.
    """
    _check_permission()
    ks = [k] if isinstance(k, int) else list(k)
    jobs = [(i, candidate + "\n" + reference)
            for i, (reference, candidates) in enumerate(zip(references, predictions, strict=True))
            for candidate in candidates]
    with ThreadPoolExecutor(max_workers=num_workers) as pool:  # each job waits on its own child process
        results = list(pool.map(lambda job: run_program(job[1], timeout_s), jobs))
    num_samples = [len(c) for c in predictions]
    num_correct = [0] * len(predictions)
    for (i, _), res in zip(jobs, results):
        num_correct[i] += int(res.passed)
    out = {}
    for kk in ks:
        if any(n < kk for n in num_samples):
            continue  # as code_eval: pass@k needs at least k samples of every problem
        out[f"pass@{kk}"] = sum(estimate_pass_at_k(n, c, kk) for n, c in zip(num_samples, num_correct)) / len(
            num_samples)
    return out


def build_predictions(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """lm-eval's `create_test` filter for humaneval: the full function is the prompt plus each completion."""
    return [[doc["prompt"] + r for r in resp] for resp, doc in zip(resps, docs)]
