"""The mixing-quality benchmark: its corpus variants (through the real pipeline) and a --quick study."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.trainer_utils import ROOT, clean_env


def _run(*args, timeout=1800):
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=clean_env(), capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def bench(demo_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    proc = _run("tools/make_mixing_benchmark.py", "--corpus", demo_data["corpus"], "--tokenizer",
                demo_data["tokenizer"], "--out", out, "--variants", "noisy,heldout,imbalanced")
    assert proc.returncode == 0, proc.stderr
    return out


def test_variants_declare_their_targets(bench):
    from neox.data import read_manifest

    noisy = json.loads((bench / "noisy" / "variant.json").read_text())
    assert len(noisy["domains"]) == 16 and len(noisy["target_domains"]) == 8
    junk = [d for d in noisy["domains"] if d not in noisy["target_domains"]]
    assert all(d.startswith("junk_") for d in junk) and len(junk) == 8
    oracle = json.loads((bench / "noisy" / "oracle_weights.json").read_text())
    assert all(oracle[d] == 0 for d in junk) and sum(oracle.values()) == pytest.approx(1.0)
    manifest = read_manifest(str(bench / "noisy" / "tokens"))
    assert sorted(manifest["splits"]["train"]) == noisy["domains"]

    heldout = json.loads((bench / "heldout" / "variant.json").read_text())
    (target,) = heldout["target_domains"]
    splits = read_manifest(str(bench / "heldout" / "tokens"))["splits"]
    assert target not in splits["train"] and target in splits["val"] and list(splits["target"]) == [target]

    sizes = read_manifest(str(bench / "imbalanced" / "tokens"))["splits"]["train"]
    tokens = np.array([e["tokens"] for e in sizes.values()])
    assert tokens.max() / tokens.min() > 50  # several domains small enough to repeat within a run


def test_unknown_variant_and_missing_corpus_are_one_line_errors(tmp_path):
    proc = _run("tools/make_mixing_benchmark.py", "--corpus", tmp_path / "none", "--out", tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "make demo-data" in proc.stderr
    proc = _run("benchmarks/mixing_quality.py", "--bench-dir", tmp_path, "--variants", "noisy")
    assert proc.returncode == 2 and "make_mixing_benchmark" in proc.stderr


def test_quick_study(bench, tmp_path):
    proc = _run("benchmarks/mixing_quality.py", "--quick", "--bench-dir", bench, "--methods", "uniform,oracle,acodm",
                "--runs-dir", tmp_path / "runs", "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = [json.loads(line) for line in (tmp_path / "out" / "mixing_quality.jsonl").read_text().splitlines()]
    assert {(r["variant"], r["method"], r["seed"], r["steps"]) for r in records} == {
        ("noisy", m, 1, 20) for m in ("uniform", "oracle", "acodm")}
    for r in records:
        assert set(r) == {"variant", "method", "label", "seed", "steps", "target_loss", "target_ppl"}
        assert r["target_ppl"] == pytest.approx(np.exp(r["target_loss"]), rel=0.5)  # mean of exp vs exp of mean
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("result: noisy_gap_closed=") and "heldout_vs_uniform=nan" in last
    assert (tmp_path / "out" / "mixing_quality.md").read_text().count("| noisy |") == 3
    assert (tmp_path / "out" / "mixing_quality.png").read_bytes()[:4] == b"\x89PNG"
    # the mixers were told the target: the AC-ODM run's config names the 8 clean domains
    cfg = (tmp_path / "runs_quick" / "noisy" / "acodm" / "seed1" / "config.yml").read_text()  # --quick: RUNS_quick
    assert "target_domains:" in cfg and "junk_" not in cfg.split("target_domains:")[1].split("target_split")[0]
