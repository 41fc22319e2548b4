"""Shared fixtures. Tests run on the CPU; GPU tests carry the ``gpu`` marker and skip without CUDA."""

from __future__ import annotations

import warnings

import pytest
import torch


def pytest_collection_modifyitems(config, items):
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
    from neox.data.preprocess import write_synthetic_domains

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
    for done, cmd in steps:
        if done.exists():
            continue
        proc = subprocess.run([sys.executable, *cmd], cwd=ROOT, env=clean_env(), capture_output=True, text=True,
                              timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    return paths
