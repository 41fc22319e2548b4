"""Proxy -> target: AC-ODM learns a policy on a small model, the exported actor drives a larger one."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tests.trainer_utils import ROOT, clean_env, read_metrics, tiny_config, train_in_process, write_config

PROXY_MIXING = {"method": "acodm", "alignment": {"mode": "sketch", "sketch_out": 16, "sketch_in": 16},
                "acodm": {"hidden_size": 16, "num_hidden_layers": 1, "num_probe_layers": 2, "batch_size": 2,
                          "warmup_steps": 2}}


def test_proxy_to_target(synthetic_data, tmp_path):
    proxy_dir, actor_dir, target_dir = tmp_path / "proxy", tmp_path / "actor", tmp_path / "target"
    train_in_process(write_config(tmp_path / "proxy.yml", tiny_config(synthetic_data, proxy_dir,
                                                                      mixing=PROXY_MIXING)))
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "export_actor.py"), str(proxy_dir), "-o",
                           str(actor_dir)], cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (actor_dir / "actor.safetensors").is_file() and (actor_dir / "actor.json").is_file()

    target = tiny_config(synthetic_data, target_dir, model={"num_layers": 3, "hidden_size": 96, "num_heads": 4,
                                                             "vocab_size": 256, "max_seq_len_tokens": 64},
                         mixing={"method": "acodm_frozen",
                                 "acodm_frozen": {"actor": str(actor_dir), "warmup_steps": 2}})
    trainer = train_in_process(write_config(tmp_path / "target.yml", target))
    assert trainer.mixing.statistics.alignment is None  # a frozen actor needs no gradient statistics
    recs = read_metrics(target_dir)
    weights = np.array([[r[f"weights/domain_0{k}"] for k in range(3)] for r in recs])
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-9)
    assert not any("mixer/critic_loss" in r for r in recs)
    # after the warm-up the weights come from the actor: they change with the state, step to step
    assert np.abs(np.diff(weights[3:], axis=0)).max() > 0


def test_target_with_other_domains_is_refused(synthetic_data, tmp_path):
    proxy_dir, actor_dir = tmp_path / "proxy", tmp_path / "actor"
    train_in_process(write_config(tmp_path / "proxy.yml", tiny_config(
        synthetic_data, proxy_dir, mixing=PROXY_MIXING, schedule={"train_steps": 3, "warmup_steps": 1})))
    from acodm.actor_export import export_actor
    export_actor(proxy_dir, actor_dir)
    target = tiny_config(synthetic_data, tmp_path / "target",
                         data={"domains": ["domain_00", "domain_02"]},
                         mixing={"method": "acodm_frozen", "acodm_frozen": {"actor": str(actor_dir)}})
    with pytest.raises(ValueError, match="domain"):
        train_in_process(write_config(tmp_path / "target.yml", target))
