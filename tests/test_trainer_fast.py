"""The trainer with the model's fast paths on: a DeepSpeed (ZeRO-1) AC-ODM run with its probe hooks, per-block
torch.compile and activation checkpointing trains as the eager run does."""

from __future__ import annotations

import pytest

from trainer_utils import read_metrics, tiny_config, train_in_process, write_config


def test_compiled_checkpointed_run_matches_eager(synthetic_data, tmp_path):
    base = tiny_config(synthetic_data, tmp_path / "eager", schedule={"train_steps": 3, "warmup_steps": 1},
                       eval={"val_samples_per_domain": 4, "interval_steps": 0},
                       mixing={"method": "acodm", "alignment": {"mode": "exact"},
                               "acodm": {"hidden_size": 8, "num_hidden_layers": 1, "num_probe_layers": 2,
                                         "warmup_steps": 1}})
    train_in_process(write_config(tmp_path / "eager.yml", base))
    fast = write_config(tmp_path / "fast.yml", {**base, "logging": {**base["logging"], "run_dir": str(tmp_path / "fast")}})
    trainer = train_in_process(fast, "model.compile=true", "model.activation_checkpointing=true")
    compiled = [n for n, m in trainer.engine.module.named_modules() if getattr(m, "_compiled_call_impl", None)]
    # The default probes of a 2-layer model: layer 1's dense_4h_to_h; layer 0 is compiled whole.
    assert compiled == ["gpt_neox.layers.0", "gpt_neox.layers.1.attention"]
    eager, got = read_metrics(tmp_path / "eager"), read_metrics(tmp_path / "fast")
    assert len(got) == 3
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in eager], abs=1e-5)
    assert [r["mixer/reward"] for r in got if "mixer/reward" in r] == pytest.approx(
        [r["mixer/reward"] for r in eager if "mixer/reward" in r], abs=1e-5)
