"""The trainer's side of mixing: the weights in force reach the mixer (update interval > 1), target domains
(evaluated, and a never-trained target probed for the gradient statistics without touching the update),
and the cross-step Gram."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.trainer_utils import interrupt_after, read_metrics, tiny_config, write_config


@pytest.fixture(scope="module")
def heldout_data(tmp_path_factory):
    """3 synthetic domains; domain_02 has no train split, only val and a 'target' split."""
    from tests.synthetic_data import write_synthetic_domains

    out = tmp_path_factory.mktemp("heldout") / "tokens"
    write_synthetic_domains(str(out), num_domains=3, docs_per_domain=120, vocab_size=256, seed=0,
                            split=("train", "val", "target"))
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["splits"]["train"]["domain_02"]
    del manifest["splits"]["target"]["domain_00"], manifest["splits"]["target"]["domain_01"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def _trainer(cfg_path, *overrides):
    from neox.config import load_config
    from neox.training.trainer import Trainer

    return Trainer(load_config(cfg_path, list(overrides)))


def test_mixer_observes_the_weights_in_force(synthetic_data, tmp_path):
    """With mixing.update_interval_steps=3 the plan keeps its weights for 3 steps while the mixer proposes new
    ones every step: what the mixer is told it sampled with must be the plan's weights, not its proposal."""
    cfg = write_config(tmp_path / "c.yml", tiny_config(synthetic_data, tmp_path / "run", mixing={
        "method": "doge", "update_interval_steps": 3, "alignment": {"mode": "exact"}}))
    trainer = _trainer(cfg)
    seen, proposals = [], []
    observe = trainer.mixing.mixer.observe

    def spy(stats):
        seen.append(np.asarray(stats.weights).copy())
        out = observe(stats)
        proposals.append(trainer.mixing.mixer.weights())
        return out

    trainer.mixing.mixer.observe = spy
    trainer.fit()
    in_force = [np.array([r[f"weights/{d}"] for d in trainer.domains]) for r in read_metrics(tmp_path / "run")]
    assert len(seen) == len(in_force) == 6
    for t, (told, used) in enumerate(zip(seen, in_force), start=1):
        np.testing.assert_allclose(told, used, err_msg=f"step {t}")
    assert not np.allclose(proposals[0], in_force[1])  # step 2 ran on the old weights: the case that matters


def test_heldout_target_is_probed_not_trained(heldout_data, tmp_path):
    cfg = write_config(tmp_path / "c.yml", tiny_config(heldout_data, tmp_path / "run", mixing={
        "method": "doge", "target_domains": ["domain_02"], "alignment": {"mode": "exact"}}))
    trainer = _trainer(cfg)
    assert trainer.domains == ["domain_00", "domain_01"] and trainer.target_only == ["domain_02"]
    # the probe's backward reaches the statistics, never a parameter's .grad
    trainer.mixing.statistics.reset()
    trainer._probe_targets()
    params = list(trainer.engine.module.parameters())
    assert all(p.grad is None or not p.grad.any() for p in params)
    reduced = trainer.mixing.statistics.reduce()
    assert reduced.token_count[2] > 0 and reduced.token_count[:2].sum() == 0
    assert reduced.gram[2, 2] > 0 and reduced.gram[:2].sum() == 0
    trainer.fit()
    train, evals = read_metrics(tmp_path / "run"), read_metrics(tmp_path / "run", "eval")
    assert "weights/domain_02" not in train[-1] and "target_probe_loss/domain_02" in train[-1]
    assert evals[-1]["val_ppl/target"] == pytest.approx(evals[-1]["val_ppl/domain_02"])
    assert train[-1]["weights/domain_00"] != pytest.approx(0.5)  # DoGE moved on the target's alignment


def test_cross_step_gram_survives_a_resume(synthetic_data, tmp_path):
    """The previous step's statistics are checkpointed: the first step after a resume has the same
    cross-step Gram (hence the same AC-ODM reward) as the uninterrupted run."""
    base = tiny_config(synthetic_data, tmp_path / "a", mixing={"method": "acodm", "alignment": {"mode": "exact"},
                       "acodm": {"hidden_size": 8, "num_hidden_layers": 1, "num_probe_layers": 2, "warmup_steps": 1}},
                       checkpoint={"interval_steps": 3})
    _trainer(write_config(tmp_path / "a.yml", base)).fit()
    cfg_b = write_config(tmp_path / "b.yml", {**base, "logging": {**base["logging"], "run_dir": str(tmp_path / "b")}})
    _trainer(cfg_b).fit()
    interrupt_after(tmp_path / "b", 3, later_checkpoints=[6])
    resumed = _trainer(cfg_b, "checkpoint.resume=auto")
    assert resumed.mixing.statistics._previous is not None
    resumed.fit()
    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert [r["mixer/reward"] for r in a if "mixer/reward" in r] == pytest.approx(
        [r["mixer/reward"] for r in b if "mixer/reward" in r], rel=1e-6)
