"""benchmarks/startup.py: its corpora are what preprocessing writes, and its child runs the data path."""

import importlib.util
import json
import os

import pytest

from neox.data import open_domains
from neox.data.preprocess import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def startup():
    spec = importlib.util.spec_from_file_location("startup_benchmark", os.path.join(REPO, "benchmarks", "startup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_corpus_is_verified_and_its_copy_is_not(startup, tmp_path, capsys):
    data = str(tmp_path / "c")
    manifest = startup.build_corpus(data, total_bytes=2_000_000, vocab_size=50277)
    assert len(manifest["domains"]) == 22 and manifest["token_ids_verified"]["below_vocab_size"] == 50277
    bin_bytes, _, documents = startup.corpus_bytes(data)
    assert bin_bytes >= 1_800_000  # small domains are floored at a few documents, so a little more
    assert documents == sum(e["documents"] for s in manifest["splits"].values() for e in s.values())
    corpus = open_domains(data, "train", seq_len_tokens=64, seed=0, vocab_size=50277)
    assert corpus.num_domains == 22 and capsys.readouterr().err == ""
    assert main(["--verify", data, "--quiet"]) == 0  # the recorded ids are the files' own
    startup.unverified_copy(data, data + "_unverified")
    copy = open_domains(data + "_unverified", "train", seq_len_tokens=64, seed=0, vocab_size=50277)
    assert copy.samples_per_epoch == corpus.samples_per_epoch
    assert "does not record verified token ids" in capsys.readouterr().err


def test_child_reports_time_and_peak_rss(startup, tmp_path, capsys):
    data = str(tmp_path / "c")
    startup.build_corpus(data, total_bytes=3_000_000, vocab_size=50277)
    capsys.readouterr()
    startup.child(data)
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["startup_s"] > 0 and report["first_batch_s"] >= report["startup_s"]
    assert report["rss_first_batch_mb"] >= report["rss_startup_mb"] >= report["rss_imports_mb"] > 0
