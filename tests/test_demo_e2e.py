"""The demo end to end on the real offline corpus: configs/demo_cpu.yml and the proxy -> target pair at a tiny
step count, the plot and summary `make demo` prints, and lm-eval at a checkpoint."""

from __future__ import annotations

import math
import subprocess
import sys

from tests.trainer_utils import ROOT, clean_env, read_metrics, run_train

TASKS = ROOT / "tests" / "data" / "lm_eval_tasks"


def _data_overrides(demo_data):
    return [f"data.path={demo_data['tokens']}", f"data.tokenizer={demo_data['tokenizer']}"]


def test_demo_cpu_and_its_plot(demo_data, tmp_path):
    run_dir = tmp_path / "demo"
    run_train(ROOT / "configs" / "demo_cpu.yml", *_data_overrides(demo_data), f"logging.run_dir={run_dir}",
              "schedule.train_steps=8", "eval.interval_steps=4", "checkpoint.interval_steps=0",
              "mixing.acodm.warmup_steps=3", "eval.lm_eval_tasks=[acodm_tiny_mc]",
              f"eval.lm_eval_include_path={TASKS}", "eval.lm_eval_limit=4")
    train = read_metrics(run_dir)
    assert [r["step"] for r in train] == list(range(1, 9))
    assert any("mixer/critic_loss" in r for r in train)  # the actor-critic trained after its warm-up
    evals = read_metrics(run_dir, "eval")
    assert evals[-1]["val_ppl/mean"] < evals[0]["val_ppl/mean"]
    lm = read_metrics(run_dir, "lm_eval")
    assert lm and 0.0 <= lm[-1]["acodm_tiny_mc/acc"] <= 1.0
    assert (run_dir / "tokenizer.json").is_file()
    proc = subprocess.run([sys.executable, "tools/plot_run.py", str(run_dir), "-o", str(tmp_path / "demo.png")],
                          cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "val" in proc.stdout.lower()


def test_demo_proxy_to_target(demo_data, tmp_path):
    proxy, target, actor = tmp_path / "proxy", tmp_path / "target", tmp_path / "actor"
    short = ["schedule.train_steps=6", "eval.interval_steps=0", "eval.val_samples_per_domain=4"]
    run_train(ROOT / "configs" / "demo_proxy.yml", *_data_overrides(demo_data), *short, f"logging.run_dir={proxy}",
              "mixing.acodm.warmup_steps=2")
    proc = subprocess.run([sys.executable, "tools/export_actor.py", str(proxy), "-o", str(actor)], cwd=ROOT,
                          env=clean_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    run_train(ROOT / "configs" / "demo_target.yml", *_data_overrides(demo_data), *short,
              f"logging.run_dir={target}", f"mixing.acodm_frozen.actor={actor}", "mixing.acodm_frozen.warmup_steps=2")
    recs = read_metrics(target)
    assert len(recs) == 6 and all(math.isfinite(r["loss"]) for r in recs)
    domains = [k for k in recs[0] if k.startswith("weights/")]
    assert len(domains) >= 4
