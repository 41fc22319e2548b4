"""Property tests: for random, extreme, NaN and inf statistics every mixer's weights stay finite, on the
simplex (sum 1 within 1e-9) and >= floor, and metrics stay finite numbers."""

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acodm.actor_export import export_actor
from acodm.mixers import StepStats, build_mixer
from acodm.serialization import save_state

NUM_PROBES = 2
SMALL_NET = dict(hidden_size=16, num_hidden_layers=1, num_probe_layers=NUM_PROBES, batch_size=2,
                 replay_capacity=8, warmup_steps=2, warmup_fit_epochs=1)  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def frozen_actor(tmp_path_factory) -> str:
    """An exported actor for K = 3 domains (trained for a few steps so its weights are not the init)."""
    root = tmp_path_factory.mktemp("frozen")
    domains = ["d0", "d1", "d2"]
    mixer = build_mixer("acodm", domains, 10, 0, **SMALL_NET)
    rng = np.random.default_rng(0)
    for t in range(1, 6):
        tokens = np.array([100.0, 50.0, 10.0])
        g = rng.normal(size=(3, 4))
        mixer.observe(StepStats(t, 10, rng.uniform(1, 3, 3) * tokens, tokens, tokens / 10, gram=g @ g.T,
                                probe_norms=rng.uniform(1, 2, NUM_PROBES)))  # fmt: skip
    save_state(root / "ckpt" / "mixer", mixer.state_dict())
    return str(export_actor(root / "ckpt", root / "actor"))


extreme = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-10.0, max_value=20.0),
    st.sampled_from([0.0, 1e-300, 1e300, -1e300, math.nan, math.inf, -math.inf]),
)
counts = st.one_of(st.integers(min_value=0, max_value=10_000).map(float), st.sampled_from([0.0, 1.0, 1e12]))


@st.composite
def step_stats(draw, k: int, step: int, total: int):
    arr = lambda elements, n: np.array(draw(st.lists(elements, min_size=n, max_size=n)), dtype=np.float64)  # noqa: E731
    tokens = arr(counts, k)
    gram = draw(st.one_of(st.none(), st.just("psd"), st.just("raw")))
    if gram == "psd":
        g = arr(st.floats(-1e3, 1e3), k * 3).reshape(k, 3)
        gram = g @ g.T
    elif gram == "raw":
        gram = arr(extreme, k * k).reshape(k, k)
    norms = draw(st.one_of(st.none(), st.just(1)))
    return StepStats(
        step=step, total_steps=total, loss_sum=arr(extreme, k), token_count=tokens, sample_count=arr(counts, k),
        gram=gram, probe_norms=None if norms is None else arr(extreme, NUM_PROBES),
        ref_loss_sum=arr(extreme, k), excess_loss_sum=draw(st.one_of(st.none(), st.just(arr(extreme, k)))),
    )  # fmt: skip


METHODS = [
    ("static", {}),
    ("odm", {"variant": "exp3"}),
    ("odm", {"variant": "smoothed_mean", "warmup_steps": 1}),
    ("doge", {}),
    ("doge", {"exclude_self": True, "normalize_by_mean_norm": True, "clip_scores": False, "mu": 1e-6}),
    ("doremi", {"lr": 1e6}),
    ("acodm", dict(SMALL_NET)),  # the default: surrogate, known-gradient actor, cross-step Gram
    ("acodm", dict(SMALL_NET, reward="linear", actor_gradient="critic")),
    ("acodm", dict(SMALL_NET, reward="paper")),
    ("acodm_frozen", {"warmup_steps": 2}),
]


@pytest.mark.parametrize("method, params", METHODS, ids=[f"{m}-{i}" for i, (m, _) in enumerate(METHODS)])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), floor=st.sampled_from([0.0, 1e-3, 0.05]))
def test_weights_always_valid(method, params, frozen_actor, data, floor):
    k = 3
    params = dict(params, floor=floor)
    if method == "acodm_frozen":
        params["actor"] = frozen_actor
    total = 6
    mixer = build_mixer(method, ["d0", "d1", "d2"], total, 0, **params)
    for step in range(1, total + 1):
        stats = data.draw(step_stats(k, step, total))
        metrics = mixer.observe(stats)
        w = mixer.weights()
        assert w.shape == (k,) and np.all(np.isfinite(w))
        assert abs(w.sum() - 1.0) <= 1e-9
        assert np.all(w >= floor)
        assert all(isinstance(v, float) for v in metrics.values())
        json.dumps(metrics)
    avg = mixer.average_weights()
    assert np.all(np.isfinite(avg)) and abs(avg.sum() - 1.0) <= 1e-9
