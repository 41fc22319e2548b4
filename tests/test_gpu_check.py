"""benchmarks/gpu_check.sh --dry-run: the flow runs on a CPU, prints every part's command, fits its 8 minutes, and
the commands it would run are valid (train.py configs through --print-config, the benchmarks' flags and shapes)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest

from tests.trainer_utils import ROOT, clean_env

PART = re.compile(r"^part (?P<name>.+?) \(timeout (?P<timeout>\d+)s\): (?P<cmd>.+) > (?P<log>\S+)$")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"], cwd=ROOT,
                          env=clean_env(GPU_CHECK_DIR=str(out), PYTHON=sys.executable), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    parts = {m["name"]: (int(m["timeout"]), shlex.split(m["cmd"]))
             for m in map(PART.match, proc.stdout.splitlines()) if m}
    return proc.stdout, parts


@pytest.mark.launches
def test_dry_run_prints_every_part_and_the_result_line(dry_run):
    stdout, parts = dry_run
    assert set(parts) == {"gpu_tests", "mfu mb8", "mfu mb16", "data", "acodm_70m", "mixing", "attention sdpa",
                          "attention flash"}
    # The limits add up to at most 8 minutes, so a hung part cannot starve the ones after it.
    assert sum(timeout for timeout, _ in parts.values()) <= 480
    lines = stdout.strip().splitlines()
    assert lines[-1].startswith("result: mfu_410m=")
    for key in ("mfu_160m=", "acodm_70m=", "sketch_vs_static_410m=", "attention_flash_vs_sdpa=", "gpu_tests="):
        assert key in lines[-1]
    assert any(line.startswith("mfu pythia_410m mb16 compiled") for line in lines)  # the table
    assert parts["gpu_tests"][1][1:5] == ["-m", "pytest", "-q", "-m"] and parts["gpu_tests"][1][5] == "gpu"


@pytest.mark.launches
def test_dry_run_commands_are_valid(dry_run):
    _, parts = dry_run
    for name in ("acodm_70m", "attention sdpa", "attention flash"):
        cmd = parts[name][1]
        assert cmd[1] == "train.py"
        proc = subprocess.run([sys.executable, *cmd[1:], "--print-config"], cwd=ROOT, env=clean_env(),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"{name}: {proc.stderr}"
    help_text = subprocess.run([sys.executable, "benchmarks/train_step.py", "--help"], cwd=ROOT, env=clean_env(),
                               capture_output=True, text=True, timeout=120).stdout
    for name in ("mfu mb8", "mfu mb16"):
        cmd = parts[name][1]
        assert cmd[1] == "benchmarks/train_step.py"
        for flag in (a for a in cmd[2:] if a.startswith("--")):
            assert flag in help_text, flag
    mixing = parts["mixing"][1]
    shape = mixing[mixing.index("--shapes") + 1]
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from mixing_overhead import SHAPES
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from neox.config import load_config

    config, overrides = SHAPES[shape]
    cfg = load_config(ROOT / config, [*overrides, "device=cuda"])
    assert (cfg.model.num_layers, cfg.model.hidden_size, cfg.data.seq_len_tokens) == (24, 1024, 1024)
