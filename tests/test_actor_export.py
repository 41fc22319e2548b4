"""Actor export: checkpoint/run dir -> actor.{safetensors,json}; load with checks; frozen mixer."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from acodm.actor_export import export_actor, load_actor
from acodm.mixers import StepStats, build_mixer
from acodm.mixers.base import apply_floor
from acodm.serialization import save_state
from acodm.state import StateBuilder, StateSpec

REPO = Path(__file__).resolve().parents[1]
DOMAINS = ["web", "code", "math", "books"]
K = len(DOMAINS)
P = 3
TOTAL = 20
SMALL_NET = dict(hidden_size=24, num_hidden_layers=2, num_probe_layers=P, batch_size=4, warmup_steps=5,
                 warmup_fit_epochs=2)  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def stats_sequence(n: int, seed: int = 0) -> list[StepStats]:
    rng = np.random.default_rng(seed)
    out = []
    for t in range(1, n + 1):
        tokens = rng.integers(1, 500, size=K).astype(np.float64)
        g = rng.normal(size=(K, 6))
        out.append(StepStats(t, TOTAL, rng.uniform(1, 4, K) * tokens, tokens, np.round(tokens / 50),
                             gram=g @ g.T, probe_norms=rng.uniform(1, 2, P)))  # fmt: skip
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory laid out like the trainer's: checkpoints/latest -> step_00000010/{mixer,config.yml}."""
    root = tmp_path_factory.mktemp("run")
    mixer = build_mixer("acodm", DOMAINS, TOTAL, 0, **SMALL_NET)
    for stats in stats_sequence(10):
        mixer.observe(stats)
    ckpt = root / "checkpoints" / "step_00000010"
    save_state(ckpt / "mixer", mixer.state_dict())
    (ckpt / "config.yml").write_text("mixing:\n  method: acodm\n  hidden_size: 24\n")
    (root / "checkpoints" / "latest").write_text("step_00000010\n")
    return root, mixer


def test_cli_exports_from_run_dir(run_dir, tmp_path):
    root, mixer = run_dir
    out = tmp_path / "actor"
    result = subprocess.run([sys.executable, "tools/export_actor.py", str(root), "-o", str(out)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "step 10" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["actor.json", "actor.safetensors"]
    meta = json.loads((out / "actor.json").read_text())
    assert meta["domains"] == DOMAINS and meta["training_step"] == 10
    assert meta["state_spec"]["dim"] == 3 * K + 2 * P + 1
    assert meta["network"] == {"state_dim": 3 * K + 2 * P + 1, "num_domains": K, "hidden_size": 24,
                               "num_hidden_layers": 2}  # fmt: skip
    assert "method: acodm" in meta["run_config_text"]
    assert meta["run_config"]["mixing"]["hidden_size"] == 24


def test_export_load_gives_same_weights(run_dir, tmp_path):
    root, mixer = run_dir
    out = export_actor(root / "checkpoints" / "step_00000010", tmp_path / "actor")  # checkpoint dir itself
    spec = StateSpec(tuple(DOMAINS), P)
    actor, meta = load_actor(out, DOMAINS, spec)
    rng = np.random.default_rng(5)
    for _ in range(5):
        state = rng.normal(size=spec.dim).astype(np.float32)
        with torch.no_grad():
            mine = apply_floor(actor(torch.tensor(state)[None])[0].double().numpy(), mixer.floor)
        np.testing.assert_array_equal(mine, mixer.actor_weights(state))
    assert not any(p.requires_grad for p in actor.parameters())


def test_frozen_mixer_follows_actor(run_dir, tmp_path):
    root, mixer = run_dir
    out = export_actor(root, tmp_path / "actor")
    frozen = build_mixer("acodm_frozen", DOMAINS, TOTAL, 0, actor=str(out), warmup_steps=2)
    assert frozen.needs.probe_norms and not frozen.needs.alignment
    builder = StateBuilder(StateSpec(tuple(DOMAINS), P))
    for stats in stats_sequence(6, seed=9):
        frozen.observe(stats)
        state = builder.build(stats.step, stats.total_steps, stats.loss_mean, stats.sample_count, stats.probe_norms)
        if stats.step >= 2:  # after the behaviour warm-up: deterministic actor(state), floor applied
            np.testing.assert_array_equal(frozen.weights(), mixer.actor_weights(state))


def test_mismatch_errors(run_dir, tmp_path):
    root, _ = run_dir
    out = export_actor(root, tmp_path / "actor")
    with pytest.raises(ValueError, match=r"other domains: missing here \['books'\], not known to it \['news'\]"):
        load_actor(out, ["web", "code", "math", "news"])
    with pytest.raises(ValueError, match=r"another order \('code': position 1 there, 0 here; 'web': position 0 there, 1 here\)"):
        load_actor(out, ["code", "web", "math", "books"])
    with pytest.raises(ValueError, match="num_probes=3.*num_probes=9"):
        load_actor(out, DOMAINS, StateSpec(tuple(DOMAINS), 9))
    with pytest.raises(ValueError, match="progress_scale"):
        load_actor(out, DOMAINS, StateSpec(tuple(DOMAINS), P, progress_scale=1.0))
    with pytest.raises(ValueError, match="other domains"):
        build_mixer("acodm_frozen", ["a", "b"], TOTAL, 0, actor=str(out))
    with pytest.raises(ValueError, match="mixing.actor is required"):
        build_mixer("acodm_frozen", DOMAINS, TOTAL, 0)
    frozen = build_mixer("acodm_frozen", DOMAINS, TOTAL, 0, actor=str(out), warmup_steps=0)
    bad = stats_sequence(1)[0]
    bad.probe_norms = np.ones(P + 1)
    with pytest.raises(ValueError, match="probe norms"):
        frozen.observe(bad)


def test_export_rejects_non_acodm_and_missing(tmp_path):
    ckpt = tmp_path / "ckpt"
    save_state(ckpt / "mixer", build_mixer("odm", DOMAINS, TOTAL, 0).state_dict())
    with pytest.raises(ValueError, match="'odm' mixer; only an 'acodm'"):
        export_actor(ckpt, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="neither a checkpoint directory"):
        export_actor(tmp_path / "nothing", tmp_path / "out")
    result = subprocess.run([sys.executable, "tools/export_actor.py", str(ckpt), "-o", str(tmp_path / "o")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2 and "only an 'acodm'" in result.stderr
    with pytest.raises(FileNotFoundError, match="not an exported actor"):
        load_actor(tmp_path)
