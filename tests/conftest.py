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


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
    """Three random-token domains (vocab 256) in the preprocess layout, train and val splits."""
    from neox.data.preprocess import write_synthetic_domains

    out = tmp_path_factory.mktemp("synthetic") / "tokens"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_synthetic_domains(str(out), num_domains=3, docs_per_domain=120, vocab_size=256, seed=0)
    return out
