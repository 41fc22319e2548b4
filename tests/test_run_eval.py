"""lm-eval on an exported tiny GPTNeoX, offline, with the local tasks in tests/data/lm_eval_tasks/."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_convert_hf import make_run  # noqa: E402  (the same tiny run fixture as the export tests)

from neox.evaluation import lm_eval_record, resolve_suite, run_lm_eval  # noqa: E402
from neox.evaluation.lm_eval_runner import EvalPlan  # noqa: E402
from neox.hf_export import export_hf  # noqa: E402

pytest.importorskip("lm_eval")

from tests.trainer_utils import clean_env  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TASKS_DIR = ROOT / "tests" / "data" / "lm_eval_tasks"


def offline_env(tmp_path: Path) -> dict[str, str]:
    # clean_env: no RANK/MASTER_PORT left in os.environ by an in-process trainer of an earlier test (lm-eval's
    # Accelerator would start a process group on that port and collide with another test's)
    return {**clean_env(), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_CACHE": str(tmp_path / "hf_datasets_cache"), "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("eval") / "run", seed=3)


def test_cli_on_run_dir_offline_local_tasks(run_dir, tmp_path):
    # Run from another directory: the tasks' relative data paths must not depend on the cwd.
    out = tmp_path / "res" / "eval.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "run_eval.py"), str(run_dir), "--suite", "acodm_tiny_mc,acodm_tiny_ppl",
         "--include-path", str(TASKS_DIR), "--bootstrap-iters", "10", "--out", str(out)],
        cwd=tmp_path, env=offline_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["lm_eval_version"] == version("lm_eval") and report["limit"] is None
    (run,) = report["runs"]
    assert run["n-shot"] == {"acodm_tiny_mc": 0, "acodm_tiny_ppl": 0}
    mc, ppl = run["results"]["acodm_tiny_mc"], run["results"]["acodm_tiny_ppl"]
    for metric in ("acc", "acc_norm"):
        assert 0.0 <= mc[metric] <= 1.0
        # 10 items: an accuracy is a multiple of 1/10.
        assert mc[metric] * 10 == pytest.approx(round(mc[metric] * 10))
    assert all(math.isfinite(ppl[m]) and ppl[m] > 0 for m in ("word_perplexity", "byte_perplexity", "bits_per_byte"))
    # A near-uniform random model over 256 tokens: bits per byte near log2(256) / (bytes per token) > 1.
    assert ppl["bits_per_byte"] == pytest.approx(math.log2(ppl["byte_perplexity"]), rel=1e-6)
    md = out.with_suffix(".md").read_text()
    assert "| acodm_tiny_mc | 0 | acc |" in md and "| acodm_tiny_ppl | 0 | bits_per_byte |" in md
    assert md in proc.stdout


def test_run_lm_eval_matches_our_loglikelihoods(run_dir, tmp_path):
    """run_lm_eval's accuracy equals the one computed from our own model's log-likelihoods."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from neox.model.config import ModelConfig
    from neox.model.gpt_neox import GPTNeoX

    import random

    import numpy as np

    hf_dir = export_hf(run_dir, tmp_path / "hf")
    torch.manual_seed(7), random.seed(7), np.random.seed(7)
    result = run_lm_eval(hf_dir, ["acodm_tiny_mc"], num_fewshot=0, limit=8, include_path=TASKS_DIR,
                         batch_size=4, device="cpu", bootstrap_iters=10)
    # lm-eval reseeds the global generators; a trainer calling this must get its streams back.
    draws = (torch.rand(1).item(), random.random(), np.random.rand())
    torch.manual_seed(7), random.seed(7), np.random.seed(7)
    assert draws == (torch.rand(1).item(), random.random(), np.random.rand())
    assert result["limit"] == 8 and result["n-shot"] == {"acodm_tiny_mc": 0}
    assert set(lm_eval_record(result)) == {"acodm_tiny_mc/acc", "acodm_tiny_mc/acc_norm"}

    ckpt = run_dir / "checkpoints" / "step_00000010"
    import yaml
    cfg = ModelConfig(**yaml.safe_load((ckpt / "config.yml").read_text())["model"])
    model = GPTNeoX.from_hf_state_dict(cfg, load_file(str(ckpt / "model.safetensors"))).eval()
    tok = AutoTokenizer.from_pretrained(hf_dir)
    docs = [json.loads(line) for line in (TASKS_DIR / "tiny_mc.jsonl").read_text().splitlines()][:8]
    correct = correct_norm = 0
    for doc in docs:
        context = f"Question: {doc['question']}\nAnswer:"
        context_ids = tok(context)["input_ids"]
        scores = []
        for choice in doc["choices"]:
            whole = tok(context + " " + choice)["input_ids"]  # lm-eval encodes the pair, then splits
            continuation = whole[len(context_ids):]
            ids = torch.tensor([context_ids + continuation])
            with torch.no_grad():
                logprobs = torch.log_softmax(model(ids[:, :-1]).float(), dim=-1)[0]  # (T-1, V)
            positions = range(len(context_ids) - 1, ids.shape[1] - 1)
            scores.append(sum(logprobs[p, ids[0, p + 1]].item() for p in positions))
        correct += int(max(range(4), key=lambda i: scores[i]) == doc["label"])
        correct_norm += int(max(range(4), key=lambda i: scores[i] / len(doc["choices"][i])) == doc["label"])
    assert result["results"]["acodm_tiny_mc"]["acc"] == pytest.approx(correct / len(docs))
    assert result["results"]["acodm_tiny_mc"]["acc_norm"] == pytest.approx(correct_norm / len(docs))


def test_suites():
    assert resolve_suite("mmlu") == [EvalPlan(("mmlu",), 0), EvalPlan(("mmlu",), 5)]
    assert resolve_suite("mmlu", num_fewshot=3) == [EvalPlan(("mmlu",), 3)]
    assert resolve_suite("paper")[0].tasks == ("lambada_openai", "piqa", "winogrande", "arc_easy", "sciq",
                                               "wikitext", "openbookqa")
    assert resolve_suite("piqa, sciq") == [EvalPlan(("piqa", "sciq"), None)]


def test_offline_dataset_and_code_execution_refusals(run_dir, tmp_path):
    # A task whose dataset lives on the Hub and is not cached: a plain message, exit code 2.
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "hub_only.yaml").write_text(
        "task: acodm_hub_only\ndataset_path: acodm-tests/not-a-cached-dataset\noutput_type: multiple_choice\n"
        "test_split: test\ndoc_to_text: '{{q}}'\ndoc_to_choice: '{{c}}'\ndoc_to_target: 0\n"
        "metric_list:\n  - metric: acc\n")
    hf_dir = export_hf(run_dir, tmp_path / "hf")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "run_eval.py"), str(hf_dir), "--suite", "acodm_hub_only",
         "--include-path", str(tasks), "--out", str(tmp_path / "x.json")],
        env=offline_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "HF_DATASETS_CACHE" in proc.stderr and "--include-path" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "x.json").exists()

    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "run_eval.py"), str(hf_dir), "--suite", "humaneval",
         "--out", str(tmp_path / "h.json")], env=offline_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "--allow-code-execution" in proc.stderr and "Traceback" not in proc.stderr


def test_model_without_tokenizer_is_refused(tmp_path):
    from neox.evaluation import EvalError

    run = make_run(tmp_path / "synthetic", with_tokenizer=False)  # synthetic-data runs have no tokenizer
    with pytest.raises(EvalError, match="has no tokenizer.*--tokenizer"), pytest.warns(UserWarning, match="no tokenizer"):
        run_lm_eval(run, ["acodm_tiny_mc"], include_path=TASKS_DIR)
