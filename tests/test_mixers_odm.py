"""ODM (EXP3 and smoothed mean) against the formulas of docs/methods.md, computed independently here."""

import math

import numpy as np
import pytest

from acodm.mixers import StepStats, build_mixer
from acodm.mixers.odm import exp3_epsilon

DOMAINS = ["a", "b", "c"]


def stats_for(step: int, loss_mean: np.ndarray, tokens: np.ndarray | None = None) -> StepStats:
    tokens = np.full(len(loss_mean), 100.0) if tokens is None else tokens
    return StepStats(step=step, total_steps=100, loss_sum=loss_mean * tokens, token_count=tokens,
                     sample_count=tokens / 10)  # fmt: skip


def test_epsilon_schedule():
    k = 3
    assert exp3_epsilon(1, k) == pytest.approx(1 / 3)  # sqrt(ln3/3) = 0.606 > 1/3
    assert exp3_epsilon(10, k) == pytest.approx(math.sqrt(math.log(3) / 30))
    assert exp3_epsilon(1000, 22) == pytest.approx(math.sqrt(math.log(22) / 22000))


def test_exp3_matches_formula():
    alpha = 0.9
    mixer = build_mixer("odm", DOMAINS, 100, 0, variant="exp3", alpha=alpha, floor=0.0)
    rng = np.random.default_rng(1)
    losses = rng.uniform(1.0, 6.0, size=(12, 3))
    # Hand-written EXP3: R̂ ← αR̂ + (1−α) L/π ; after step t π = (1 − Kε_t) softmax(ε_{t−1} R̂) + ε_t with
    # ε_0 = 1/K (the released code's indexing: ε of the completed step, ε_prev of the previous update)
    r_hat = np.zeros(3)
    pi = np.full(3, 1 / 3)
    eps_prev = 1 / 3
    for t in range(1, 13):
        np.testing.assert_allclose(mixer.weights(), pi, rtol=0, atol=1e-12)
        mixer.observe(stats_for(t, losses[t - 1]))
        r_hat = alpha * r_hat + (1 - alpha) * losses[t - 1] / pi
        eps_t = min(1 / 3, math.sqrt(math.log(3) / (3 * t)))
        e = np.exp(eps_prev * r_hat)
        pi = (1 - 3 * eps_t) * e / e.sum() + eps_t
        eps_prev = eps_t
    np.testing.assert_allclose(mixer.weights(), pi, rtol=0, atol=1e-12)
    # after 12 steps ε is below 1/K, so the policy is no longer uniform: the test had something to check
    assert np.ptp(pi) > 1e-3


def test_exp3_only_present_domains_update_and_floor():
    mixer = build_mixer("odm", DOMAINS, 100, 0, variant="exp3", alpha=0.5, floor=0.01)
    for t in range(1, 30):
        # domain c never appears: its R̂ stays 0 and its weight falls towards the floor
        mixer.observe(stats_for(t, np.array([3.0, 3.0, np.nan]), tokens=np.array([10.0, 10.0, 0.0])))
    w = mixer.weights()
    assert w[2] < w[0] and w[2] >= 0.01 and abs(w.sum() - 1) < 1e-12


def test_smoothed_mean_matches_formula():
    alpha = 0.9
    mixer = build_mixer("odm", DOMAINS, 100, 0, variant="smoothed_mean", alpha=alpha, floor=0.0)
    rng = np.random.default_rng(2)
    losses = rng.uniform(1.0, 4.0, size=(8, 3))
    r_hat = np.zeros(3)  # the released code starts R̂ at 0
    for t in range(1, 9):
        mixer.observe(stats_for(t, losses[t - 1]))
        r_hat = alpha * r_hat + (1 - alpha) * np.exp(losses[t - 1])
        eps = min(1 / 3, math.sqrt(math.log(3) / (3 * t)))
        expected = (1 - 3 * eps) * r_hat / r_hat.sum() + eps
        np.testing.assert_allclose(mixer.weights(), expected, rtol=0, atol=1e-12)


def test_warmup_keeps_initial_weights():
    init = {"a": 0.7, "b": 0.2, "c": 0.1}
    mixer = build_mixer("odm", DOMAINS, 100, 0, warmup_steps=5, initial_weights=init, floor=0.0)
    # the released code updates only when t > warmup_steps: steps 1..6 run on the initial weights
    for t in range(1, 6):
        mixer.observe(stats_for(t, np.array([1.0, 2.0, 3.0])))
        np.testing.assert_allclose(mixer.weights(), [0.7, 0.2, 0.1])
    assert np.all(mixer._exp3_reward == 0.0)  # and no reward updates during warm-up
    mixer.observe(stats_for(6, np.array([1.0, 2.0, 3.0])))
    assert not np.allclose(mixer.weights(), [0.7, 0.2, 0.1])


def test_unknown_parameter_suggests_close_match():
    with pytest.raises(ValueError, match=r"'alpah'.*Did you mean 'alpha'"):
        build_mixer("odm", DOMAINS, 100, 0, alpah=0.5)
    with pytest.raises(ValueError, match="Did you mean 'doge'"):
        build_mixer("dogee", DOMAINS, 100, 0)
    with pytest.raises(ValueError, match="variant"):
        build_mixer("odm", DOMAINS, 100, 0, variant="ucb")
    with pytest.raises(ValueError, match="floor"):
        build_mixer("odm", DOMAINS, 100, 0, floor=0.5)
    with pytest.raises(ValueError, match="missing"):
        build_mixer("odm", DOMAINS, 100, 0, initial_weights={"a": 1.0})
