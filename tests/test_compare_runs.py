"""compare_runs / plot_run on synthetic metrics.jsonl files in the trainer's format."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from neox.reports import RunMismatchError, compare_runs, plot_run, summarize_run
from neox.training.metrics import RunReadError, read_run

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = ["arxiv", "github", "wiki"]


def header(run_name: str, **overrides) -> dict:
    rec = {"kind": "run", "domains": DOMAINS, "data_path": "/data/demo", "manifest_sha256": "m" * 64,
           "tokenizer_sha256": "t" * 64, "val_samples_per_domain": 8, "val_fingerprint": "f" * 16,
           "seed": 1, "method": "acodm", "run_name": run_name}
    rec.update(overrides)
    return rec


def eval_rec(step: int, mean_ppl: float) -> dict:
    # Per-domain values symmetric around the mean, so the unweighted mean is exactly mean_ppl.
    rec = {"kind": "eval", "step": step, "tokens": step * 1024}
    for offset, d in zip((-1.0, 0.0, 1.0), DOMAINS):
        rec[f"val_ppl/{d}"] = mean_ppl + offset
        rec[f"val_loss/{d}"] = math.log(mean_ppl + offset)
    rec["val_ppl/mean"] = mean_ppl
    rec["val_ppl/weighted"] = mean_ppl + 0.5
    return rec


def train_rec(step: int, weights: list[float]) -> dict:
    rec = {"kind": "train", "step": step, "tokens": step * 1024, "loss": 3.0, "lr": 1e-3, "tokens_per_s": 1e4}
    rec.update({f"weights/{d}": w for d, w in zip(DOMAINS, weights)})
    return rec


def write_run(path: Path, records: list[dict], torn_tail: str = "") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    with (path / "metrics.jsonl").open("w") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")
        f.write(torn_tail)
    return path


def train_block(steps: range) -> list[dict]:
    recs = []
    for s in steps:
        w0 = 0.2 + 0.4 * s / 40
        recs.append(train_rec(s, [w0, 0.5 - 0.2 * s / 40, 0.3 - 0.2 * s / 40]))
    return recs


@pytest.fixture
def runs(tmp_path: Path) -> dict[str, Path]:
    # Run "ac": logged to step 40, crashed, resumed from step 20. The stale records of the first attempt
    # (steps 30 and 40 with ppl 40, 38) must be superseded by the resumed attempt's (30, 20).
    ac = [header("ac")] + train_block(range(1, 41)) + [
        eval_rec(10, 100.0), eval_rec(20, 50.0), eval_rec(30, 40.0), eval_rec(40, 38.0),
        header("ac")] + train_block(range(21, 41)) + [eval_rec(30, 30.0), eval_rec(40, 20.0)]
    odm = [header("odm", method="odm")] + train_block(range(1, 41)) + [
        eval_rec(10, 120.0), eval_rec(20, 70.0), eval_rec(30, 45.0), eval_rec(40, 35.0)]
    short = [header("short", method="static")] + train_block(range(1, 21)) + [
        eval_rec(10, 200.0), eval_rec(20, 150.0)]
    return {"ac": write_run(tmp_path / "ac", ac, torn_tail='{"kind": "train", "st'),
            "odm": write_run(tmp_path / "odm", odm), "short": write_run(tmp_path / "short", short)}


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.size[0] > 200 and img.size[1] > 150


def test_later_record_wins_and_torn_tail(runs):
    run = read_run(runs["ac"])
    assert [r["step"] for r in run.evals] == [10, 20, 30, 40]
    assert run.mean_val_ppl_series() == ([10, 20, 30, 40], [100.0, 50.0, 30.0, 20.0])
    assert [r["step"] for r in run.train] == list(range(1, 41))


def test_compare_outputs_and_time_to_target(runs, tmp_path):
    out = tmp_path / "cmp"
    summary = compare_runs([runs["ac"], runs["odm"], runs["short"]], out)
    for name in ("val_ppl.png", "val_ppl_domains.png", "weights.png"):
        assert_png(out / name)
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))

    final = summary["runs"]
    assert final["ac"]["final_val_ppl_mean"] == 20.0 and final["ac"]["final_step"] == 40
    assert final["odm"]["final_val_ppl"] == {"arxiv": 34.0, "github": 35.0, "wiki": 36.0}
    assert final["short"]["final_step"] == 20

    ttt = {(r["a"], r["b"]): r for r in summary["time_to_target"]}
    assert len(ttt) == 6
    # ac reaches odm's final 35 at its step-30 eval (30 <= 35): 30 / 40 of odm's steps, 25% faster.
    assert ttt[("ac", "odm")]["a_reached_step"] == 30
    assert ttt[("ac", "odm")]["fraction"] == pytest.approx(0.75)
    assert ttt[("ac", "odm")]["speedup"] == pytest.approx(0.25)
    # ac reaches short's final 150 at step 10; short ended at step 20.
    assert ttt[("ac", "short")]["fraction"] == pytest.approx(0.5)
    # odm reaches short's 150 at step 10 (120 <= 150).
    assert ttt[("odm", "short")]["fraction"] == pytest.approx(0.5)
    # odm never gets to ac's 20 although it ran as long: ">1"; short stopped at 20: "never".
    assert ttt[("odm", "ac")]["fraction"] is None
    assert ttt[("short", "ac")]["fraction"] is None

    md = (out / "summary.md").read_text()
    assert "71% faster" in md
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in md.splitlines() if line.startswith("| ")}
    # Time-to-target table: row A, columns B in run order (ac, odm, short).
    assert rows["ac"][-3:] == ["—", "0.750", "0.500"]
    assert rows["odm"][-3:] == [">1", "—", "0.500"]
    assert rows["short"][-3:] == ["never (ran to step 20)", "never (ran to step 20)", "—"]


def test_names_option(runs, tmp_path):
    summary = compare_runs([runs["ac"], runs["odm"]], tmp_path / "cmp", names=["AC-ODM", "ODM"])
    assert set(summary["runs"]) == {"AC-ODM", "ODM"}
    with pytest.raises(ValueError, match="one name per run"):
        compare_runs([runs["ac"], runs["odm"]], tmp_path / "cmp2", names=["only-one"])


@pytest.mark.parametrize("field,value", [
    ("domains", ["arxiv", "github"]),
    ("manifest_sha256", "x" * 64),
    ("tokenizer_sha256", None),
    ("val_fingerprint", "g" * 16),
    ("val_samples_per_domain", 16),
])
def test_refuses_incomparable_runs(runs, tmp_path, field, value):
    other = write_run(tmp_path / "other", [header("other", **{field: value}), eval_rec(10, 90.0)])
    with pytest.raises(RunMismatchError) as err:
        compare_runs([runs["ac"], runs["odm"], other], tmp_path / "cmp")
    msg = str(err.value)
    assert f"'{field}'" in msg and "other" in msg and "ac, odm" in msg
    assert not (tmp_path / "cmp" / "summary.md").exists()


def test_clear_errors_for_unreadable_runs(runs, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RunReadError, match="has no metrics.jsonl"):
        compare_runs([runs["ac"], empty], tmp_path / "cmp")
    no_eval = write_run(tmp_path / "no_eval", [header("no_eval")] + train_block(range(1, 5)))
    with pytest.raises(RunReadError, match="no eval records"):
        compare_runs([runs["ac"], no_eval], tmp_path / "cmp")
    bad = write_run(tmp_path / "bad", [header("bad")], torn_tail="not json\n" + json.dumps(eval_rec(1, 2.0)) + "\n")
    with pytest.raises(RunReadError, match=r"metrics.jsonl:2 is not valid JSON"):
        read_run(bad)


def test_plot_run_and_summary(runs, tmp_path):
    out = plot_run(runs["ac"], tmp_path / "plots" / "ac.png")
    assert_png(out)
    table = summarize_run(runs["ac"])
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in table.splitlines() if line.startswith("| ")}
    assert rows["domain"] == ["step 10", "step 40", "change"]
    assert rows["arxiv"] == ["99", "19", "-80.8%"]
    assert rows["mean"] == ["100", "20", "-80.0%"]
    assert rows["weighted"] == ["100.5", "20.5", "-79.6%"]


def test_command_line_tools(runs, tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "compare_runs.py"), str(runs["ac"]),
                           str(runs["odm"]), "-o", str(out), "--names", "A,B"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| A |" in proc.stdout and (out / "weights.png").exists()

    other = write_run(tmp_path / "other", [header("other", manifest_sha256="z"), eval_rec(10, 90.0)])
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "compare_runs.py"), str(runs["ac"]),
                           str(other), "-o", str(tmp_path / "cli2")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "manifest_sha256" in proc.stderr and "Traceback" not in proc.stderr

    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "plot_run.py"), str(runs["odm"])],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert_png(runs["odm"] / "run.png")
    assert "| mean | 120 | 35 |" in proc.stdout


def test_nan_metrics_written_as_null_stay_readable(runs, tmp_path):
    # The trainer writes a NaN metric as JSON null; it must plot as a gap and keep summary.json strict JSON.
    nan_eval = eval_rec(20, 60.0)
    nan_eval["val_ppl/github"] = None
    nan_eval["val_ppl/mean"] = None
    run = write_run(tmp_path / "nan", [header("nan")] + train_block(range(1, 41))
                    + [eval_rec(10, 110.0), nan_eval, eval_rec(40, 30.0)])
    summary = compare_runs([run, runs["odm"]], tmp_path / "cmp")
    text = (tmp_path / "cmp" / "summary.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    ttt = {(r["a"], r["b"]): r for r in summary["time_to_target"]}
    assert ttt[("nan", "odm")]["a_reached_step"] == 40  # the NaN eval at step 20 never counts as reached
    assert_png(tmp_path / "cmp" / "val_ppl_domains.png")


def test_runs_of_one_config_are_named_by_directory(runs, tmp_path):
    # Two methods trained from the same config share its run_name; the directories tell them apart.
    a = write_run(tmp_path / "demo_acodm", [header("demo_cpu"), eval_rec(10, 50.0)])
    b = write_run(tmp_path / "demo_odm", [header("demo_cpu", method="odm"), eval_rec(10, 60.0)])
    c = write_run(tmp_path / "x" / "demo_odm", [header("demo_cpu", method="odm"), eval_rec(10, 70.0)])
    summary = compare_runs([a, b, c], tmp_path / "cmp")
    assert list(summary["runs"]) == ["demo_acodm", "demo_odm", "demo_odm#2"]
