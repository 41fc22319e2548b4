"""Shared fixtures. Tests run on the CPU; GPU tests carry the ``gpu`` marker and skip without CUDA."""

from __future__ import annotations

import warnings

import pytest
import torch


def pytest_sessionstart(session):
    """Build (or load) DeepSpeed's CPU shm op once, before any test and outside every test's timeout; a lock left
    by a killed build is removed, a live one waited for with a limit (neox/training/ds_ops.py). Not under
    ``make test-fast`` (ACODM_TEST_FAST=1), whose tests start no DeepSpeed engine worth the import."""
    import os

    if os.environ.get("ACODM_TEST_FAST") == "1":
        import matplotlib.font_manager  # noqa: F401  # builds its font cache (runs fc-list) before the guard is on
        return
    if hasattr(session.config, "workerinput"):
        return
    from neox.training.ds_ops import OpBuildError, ensure_shm_op

    try:
        ensure_shm_op(wait_s=600)
    except OpBuildError as e:
        pytest.exit(f"error: {e}", returncode=2)


# A trainer in this process runs ninja to load DeepSpeed's op, hence Trainer( and train_in_process( too.
_LAUNCH_PATTERNS = ("run_train(", "subprocess.", "Popen(", "run_distributed(", "get_context(", "multiprocessing",
                    "Trainer(", "train_in_process(")
# Tests whose processes start inside library code the source scan cannot see (worker pools, pip, lm-eval).
_INDIRECT_LAUNCHERS = ("tests/test_pipeline.py::", "tests/test_preprocess.py::test_multiworker",
                       "tests/test_run_eval.py::test_run_lm_eval", "tests/test_tokenizer.py::test_neox20b_offline", "tests/test_code_execution.py::")


def _launches(item) -> bool:
    """Whether a test starts processes: its function, the module functions it calls (two levels) or its
    fixtures mention a launch. ``make test-fast`` deselects these; a guard there fails any it misses."""
    import inspect

    module = getattr(item, "module", None)
    seen, todo = set(), [getattr(item, "function", None)]
    info = getattr(item, "_fixtureinfo", None)
    for name, defs in (info.name2fixturedefs.items() if info else ()):
        if name != "_no_launches_in_fast_mode":
            todo += [d.func for d in defs]
    depth = {id(f): 0 for f in todo}
    while todo:
        fn = todo.pop()
        if fn is None or id(fn) in seen or not callable(fn):
            continue
        seen.add(id(fn))
        try:
            source = inspect.getsource(fn)
        except (OSError, TypeError):
            continue
        if any(p in source for p in _LAUNCH_PATTERNS):
            return True
        if depth.get(id(fn), 0) < 2 and module is not None and hasattr(fn, "__code__"):
            for name in fn.__code__.co_names:
                callee = getattr(module, name, None)
                if inspect.isfunction(callee) and callee.__module__ == module.__name__:
                    depth[id(callee)] = depth.get(id(fn), 0) + 1
                    todo.append(callee)
    return False


@pytest.fixture(autouse=True)
def _no_launches_in_fast_mode(request, monkeypatch):
    """Under ``make test-fast`` a test that starts a process fails, so the fast subset stays launch-free."""
    import os

    if os.environ.get("ACODM_TEST_FAST") != "1":
        yield
        return
    import multiprocessing.process
    import subprocess

    def refuse(*args, **kwargs):
        raise RuntimeError(f"{request.node.nodeid} starts a process under make test-fast; mark it "
                           f"@pytest.mark.launches")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", refuse)
    yield


def pytest_collection_modifyitems(config, items):
    for item in items:
        indirect = item.nodeid.startswith(_INDIRECT_LAUNCHERS)
        if "launches" not in item.keywords and (indirect or _launches(item)):
            item.add_marker(pytest.mark.launches)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny networks: intra-op threads only add synchronisation (10x slower on a loaded 2-core machine)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
    """Three random-token domains (vocab 256) in the preprocess layout, train and val splits."""
    from tests.synthetic_data import write_synthetic_domains

    out = tmp_path_factory.mktemp("synthetic") / "tokens"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_synthetic_domains(str(out), num_domains=3, docs_per_domain=120, vocab_size=256, seed=0)
    return out


@pytest.fixture(scope="session")
def demo_data():
    """The tiny offline demo corpus, its BPE and its token files, built with the project's own tools.

    Cached under .cache/test-demo (git-ignored) so a warm machine rebuilds nothing; CI builds it once.
    Returns {"corpus", "tokenizer", "tokens"} paths.
    """
    import subprocess
    import sys

    from tests.trainer_utils import ROOT, clean_env

    base = ROOT / ".cache" / "test-demo"
    paths = {"corpus": base / "corpus", "tokenizer": base / "tokenizer.json", "tokens": base / "tokens"}
    steps = [
        (paths["corpus"] / "stats.json",
         ["tools/build_minipile.py", "--out", str(paths["corpus"]), "--profile", "tiny", "--cache",
          str(ROOT / ".cache" / "minipile"), "--overwrite"]),
        (paths["tokenizer"],
         ["tools/train_tokenizer.py", "--input", str(paths["corpus"]), "--vocab-size", "4096", "--out",
          str(paths["tokenizer"])]),
        (paths["tokens"] / "manifest.json",
         ["tools/preprocess_data.py", "--input", str(paths["corpus"]), "--output-dir", str(paths["tokens"]),
          "--tokenizer", str(paths["tokenizer"]), "--overwrite", "--quiet"]),
    ]
    import fcntl

    base.mkdir(parents=True, exist_ok=True)
    # Both xdist workers ask for it at once: one builds, the other waits and finds it built (a second
    # preprocess into the same directory would clear the first one's temporary output as a leftover).
    with open(base.parent / "test-demo.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for done, cmd in steps:
            if done.exists():
                continue
            proc = subprocess.run([sys.executable, *cmd], cwd=ROOT, env=clean_env(), capture_output=True, text=True,
                                  timeout=1800)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    return paths
