"""Chaos at a small size (benchmarks/chaos.py): a run interrupted by each signal, once in the middle of a checkpoint
write, with a damaged checkpoint between restarts, ends exactly like the run left alone. And the bugs the
full-size chaos run found, one focused test each."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from benchmarks.chaos import Interrupt, chaos_config, compare_runs, run_chaos, run_uninterrupted, table
from tests.trainer_utils import clean_env, read_metrics, tiny_config, train_in_process, write_config

STEPS = 32


@pytest.mark.launches
def test_chaos_small(synthetic_data, tmp_path):
    configs = {}
    for name in ("reference", "chaos"):
        (tmp_path / name).mkdir()
        configs[name] = write_config(tmp_path / name / "config.yml",
                                     chaos_config(synthetic_data, tmp_path / name / "run", STEPS, 4, size="small"))
    run_uninterrupted(configs["reference"], env=clean_env())
    plan = [Interrupt("SIGTERM", "step"), Interrupt("SIGKILL", "write"), Interrupt("SIGINT", "step", corrupt=True),
            Interrupt("SIGKILL", "step")]
    rows = run_chaos(configs["chaos"], plan, random.Random(3), env=clean_env())
    report = table(rows)
    # Kills aimed at a write that came after it are rows of their own, retried until one lands in the window.
    delivered = [(r.signal, r.when) for r in rows if "already written" not in r.at]
    assert delivered == [(it.signal, it.when) for it in plan], report
    assert all(r.survived for r in rows), report
    assert any(r.when == "write" and r.at.startswith("writing step_") for r in rows), report
    assert any(r.corruption.startswith(("truncate ", "delete ")) for r in rows), report
    cmp = compare_runs(tmp_path / "reference" / "run", tmp_path / "chaos" / "run", STEPS)
    assert cmp.losses_equal and cmp.weights_bitwise, (cmp.notes, report)
    assert cmp.one_record_per_step, (cmp.notes, report)
    assert cmp.checkpoints and cmp.checkpoints_verified == cmp.checkpoints, (cmp.notes, report)


# ------------------------------------------------------------------------------------------ regressions

BASE = dict(mixing={"method": "odm"}, schedule={"train_steps": 6, "warmup_steps": 1},
            eval={"interval_steps": 0, "at_start": True, "val_samples_per_domain": 4})


def test_resume_auto_before_the_first_checkpoint_starts_over(synthetic_data, tmp_path):
    """A run killed before its first checkpoint (SIGKILL during its first write) left metrics.jsonl and no
    checkpoint. resume=auto refused it ("already holds metrics.jsonl; resume it with checkpoint.resume=auto");
    now it starts over, with one record per step and a resume record at step 0. resume=none still refuses."""
    cfg = write_config(tmp_path / "c.yml", tiny_config(synthetic_data, tmp_path / "run", checkpoint={
        "interval_steps": 0, "save_final": False}, **BASE))
    first = [r["loss"] for r in read_metrics(train_in_process(cfg).run_dir)]
    with pytest.raises(FileExistsError, match="already holds metrics.jsonl"):
        train_in_process(cfg)
    train_in_process(cfg, "checkpoint.resume=auto")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 7))
    assert [r["loss"] for r in records if r["kind"] == "train"] == first
    assert [r["step"] for r in records if r["kind"] == "eval"] == [0, 6]
    resume = [r for r in records if r["kind"] == "resume"]
    assert len(resume) == 1 and resume[0]["step"] == 0 and resume[0]["checkpoint"] is None
    assert resume[0]["dropped_records"] == 8  # 6 train and 2 eval records of the first attempt
    assert sum(r["kind"] == "run" for r in records) == 1


@pytest.fixture(scope="module")
def run6(synthetic_data, tmp_path_factory):
    """Checkpoints at steps 2, 4 and 6, none deleted."""
    root = tmp_path_factory.mktemp("run6")
    cfg = write_config(root / "c.yml", tiny_config(synthetic_data, root / "run", checkpoint={
        "interval_steps": 2, "keep_last": 0}, **BASE))
    train_in_process(cfg)
    return root / "run"


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run / "checkpoints", to)
    return to


def test_a_damaged_checkpoint_does_not_count_toward_keep_last(run6, tmp_path):
    """keep_last=2 kept the damaged step 4 beside the new step 6 and deleted step 2, the only other checkpoint a
    run could resume from; a second damage then lost the run. Now the damaged one goes and step 2 stays."""
    from neox.training.checkpoint import _prune

    root = _copy(run6, tmp_path / "ck")
    model = root / "step_00000004" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:100])
    _prune(root, keep_last=2, known_good=root / "step_00000006")
    assert sorted(p.name for p in root.glob("step_*")) == ["step_00000002", "step_00000006"]


def test_the_checkpoint_just_written_is_never_pruned(run6, tmp_path):
    """A stop writes a checkpoint older than intact ones of an abandoned branch (a resume from an older one):
    keep_last=1 kept the newest and deleted the one just written, which ``latest`` names."""
    from neox.training.checkpoint import _prune

    root = _copy(run6, tmp_path / "ck")
    _prune(root, keep_last=1, known_good=root / "step_00000002")
    assert (root / "step_00000002").is_dir()


def test_a_half_deleted_checkpoint_is_not_verified(run6, tmp_path):
    """A kill during cleanup's rmtree can leave a checkpoint without manifest.json and trainer.json; it passed
    as a checkpoint from before manifests and would have been resumed from."""
    from neox.training.checkpoint import resolve_checkpoint, verify_checkpoint

    root = _copy(run6, tmp_path / "run" / "checkpoints")
    for name in ("manifest.json", "trainer.json"):
        (root / "step_00000006" / name).unlink()
    assert verify_checkpoint(root / "step_00000006") == "has neither manifest.json nor trainer.json"
    messages: list[str] = []
    assert resolve_checkpoint(tmp_path / "run", log=messages.append).name == "step_00000004"
    assert len(messages) == 1 and "step_00000006" in messages[0]
