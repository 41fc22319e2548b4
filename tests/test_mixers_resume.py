"""Save → load → continue equals an uninterrupted run (identical weights) for every mixer; serialization."""

import json

import numpy as np
import pytest
import torch

from acodm.actor_export import export_actor
from acodm.mixers import StepStats, build_mixer
from acodm.serialization import load_state, save_state

DOMAINS = ["web", "code", "math"]
K = len(DOMAINS)
TOTAL = 12
SMALL_NET = dict(hidden_size=16, num_hidden_layers=2, num_probe_layers=2, batch_size=2, replay_capacity=5,
                 warmup_steps=4, warmup_fit_epochs=2)  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def stats_sequence(seed: int = 0) -> list[StepStats]:
    rng = np.random.default_rng(seed)
    out = []
    for t in range(1, TOTAL + 1):
        tokens = rng.integers(0, 500, size=K).astype(np.float64)
        tokens[t % K] = 0.0 if t % 4 == 0 else tokens[t % K]  # an absent domain now and then
        g = rng.normal(size=(K, 5)) * (tokens > 0)[:, None]
        out.append(StepStats(t, TOTAL, rng.uniform(1, 4, K) * tokens, tokens, np.round(tokens / 50),
                             gram=g @ g.T, probe_norms=rng.uniform(1, 2, 2),
                             excess_loss_sum=rng.uniform(0, 0.5, K) * tokens))  # fmt: skip
    return out


@pytest.fixture(scope="module")
def actor_dir(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("actor")
    mixer = build_mixer("acodm", DOMAINS, TOTAL, 1, **SMALL_NET)
    for stats in stats_sequence(5)[:6]:
        mixer.observe(stats)
    save_state(root / "ckpt" / "mixer", mixer.state_dict())
    return str(export_actor(root / "ckpt", root / "actor"))


CASES = [
    ("static", {"kind": "natural", "weights": {"web": 3, "code": 1, "math": 1}}),
    ("odm", {"variant": "exp3"}),
    ("odm", {"variant": "smoothed_mean", "warmup_steps": 2}),
    ("doge", {"lr": 0.05}),
    ("doremi", {}),
    ("acodm", dict(SMALL_NET)),  # the default: surrogate, known-gradient actor, cross-step Gram
    ("acodm", dict(SMALL_NET, reward="linear", actor_gradient="critic")),
    ("acodm", dict(SMALL_NET, reward="paper", optimizer="adam")),
    ("acodm_frozen", {"warmup_steps": 3}),
]


@pytest.mark.parametrize("method, params", CASES, ids=[f"{m}-{i}" for i, (m, _) in enumerate(CASES)])
@pytest.mark.parametrize("split", [3, 7])
def test_resume_equals_uninterrupted(method, params, split, actor_dir, tmp_path):
    if method == "acodm_frozen":
        params = dict(params, actor=actor_dir)
    sequence = stats_sequence()
    straight = build_mixer(method, DOMAINS, TOTAL, 42, **params)
    expected = []
    for stats in sequence:
        straight.observe(stats)
        expected.append(straight.weights())

    first = build_mixer(method, DOMAINS, TOTAL, 42, **params)
    for stats in sequence[:split]:
        first.observe(stats)
    save_state(tmp_path / "mixer", first.state_dict())
    del first
    resumed = build_mixer(method, DOMAINS, TOTAL, 42, **params)
    resumed.load_state_dict(load_state(tmp_path / "mixer"))
    np.testing.assert_array_equal(resumed.weights(), expected[split - 1])
    for i, stats in enumerate(sequence[split:], start=split):
        resumed.observe(stats)
        np.testing.assert_array_equal(resumed.weights(), expected[i], err_msg=f"step {i + 1}")
    np.testing.assert_array_equal(resumed.average_weights(), straight.average_weights())
    # the run did something: weights are not constant (static excepted)
    if method != "static":
        assert not np.allclose(expected[0], expected[-1])


def test_seeded_determinism_and_seed_matters():
    sequence = stats_sequence()

    def run(seed):
        mixer = build_mixer("acodm", DOMAINS, TOTAL, seed, **SMALL_NET)
        for stats in sequence:
            mixer.observe(stats)
        return mixer.weights()

    np.testing.assert_array_equal(run(3), run(3))
    assert not np.array_equal(run(3), run(4))


def test_load_rejects_other_method_or_domains(tmp_path):
    odm = build_mixer("odm", DOMAINS, TOTAL, 0)
    with pytest.raises(ValueError, match="method 'odm'"):
        build_mixer("doge", DOMAINS, TOTAL, 0).load_state_dict(odm.state_dict())
    with pytest.raises(ValueError, match="domains"):
        build_mixer("odm", ["a", "b", "c"], TOTAL, 0).load_state_dict(odm.state_dict())


def test_save_load_state_round_trip(tmp_path):
    state = {
        "t32": torch.randn(3, 2),
        "bf16": torch.randn(4).to(torch.bfloat16),
        "i64": torch.arange(5),
        "flag": torch.tensor(True),
        "np64": np.linspace(0, 1, 7),
        "npint": np.arange(4, dtype=np.int32),
        "npbool": np.array([True, False]),
        "np0d": np.array(3.5),
        "nested": {"a.b": torch.ones(2), "a": {"b": torch.zeros(2)}, "none": None, "s": "x", "f": 1.5,
                   "big": 2**100, "nan": float("nan")},
        "opt": {"state": {0: {"step": torch.tensor(3.0)}, 1: {}}, "param_groups": [{"params": [0, 1], "lr": 0.1}]},
        "tuple": (1, 2, torch.ones(1)),
    }  # fmt: skip
    save_state(tmp_path / "s", state)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["state.json", "tensors.safetensors"]
    back = load_state(tmp_path / "s")
    for key in ("t32", "bf16", "i64", "flag"):
        assert isinstance(back[key], torch.Tensor) and back[key].dtype == state[key].dtype
        assert torch.equal(back[key], state[key])
    for key in ("np64", "npint", "npbool", "np0d"):
        assert isinstance(back[key], np.ndarray) and back[key].dtype == state[key].dtype
        np.testing.assert_array_equal(back[key], state[key])
    assert torch.equal(back["nested"]["a.b"], torch.ones(2)) and torch.equal(back["nested"]["a"]["b"], torch.zeros(2))
    assert back["nested"]["none"] is None and back["nested"]["big"] == 2**100 and np.isnan(back["nested"]["nan"])
    assert set(back["opt"]["state"]) == {0, 1} and back["opt"]["param_groups"][0]["params"] == [0, 1]
    assert back["tuple"][:2] == [1, 2]
    # overwrite in place: the old content is replaced and no temporary directories are left behind
    save_state(tmp_path / "s", {"x": np.ones(1)})
    assert set(load_state(tmp_path / "s")) == {"x"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]
    assert "pickle" not in json.dumps(json.loads((tmp_path / "s" / "state.json").read_text()))


def test_save_state_rejects_what_it_cannot_store(tmp_path):
    with pytest.raises(TypeError, match="object array"):
        save_state(tmp_path / "bad", {"x": np.array([object()])})
    with pytest.raises(TypeError, match="unsupported value"):
        save_state(tmp_path / "bad", {"x": object()})
    with pytest.raises(ValueError, match="reserved"):
        save_state(tmp_path / "bad", {"__tensor__": 1})
    assert not (tmp_path / "bad").exists()
    with pytest.raises(FileNotFoundError, match="not a saved state"):
        load_state(tmp_path)
