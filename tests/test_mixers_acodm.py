"""AC-ODM mixer: state features, rewards, transition bookkeeping, warm-up, by hand."""

import math

import numpy as np
import pytest
import torch

from acodm.mixers import StepStats, build_mixer
from acodm.mixers.acodm import alignment_reward
from acodm.mixers.base import apply_floor
from acodm.state import StateBuilder, StateSpec, zscore

DOMAINS = ["a", "b", "c"]
# The DDPG machinery by hand: the linear reward with a learned critic on the nominal weights (the design
# before the surrogate; tests/test_mixers_surrogate.py covers the default).
SMALL = dict(hidden_size=16, num_hidden_layers=2, num_probe_layers=2, batch_size=2, warmup_steps=4,
             warmup_fit_epochs=2, reward="linear", actor_gradient="critic", action="nominal")  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def z(v):
    # std with N - 1 as torch.std in the reference's mean_std_norm (DANG-ai/AC-ODM megatron/data/agent.py L16-L20)
    v = np.asarray(v, dtype=np.float64)
    return np.clip((v - v.mean()) / (v.std(ddof=1) + 1e-8), -3, 3)


def test_state_features_by_hand():
    spec = StateSpec(tuple(DOMAINS), num_probes=2)
    assert spec.dim == 3 * 3 + 2 * 2 + 1
    assert [name for name, _ in spec.blocks] == ["loss", "loss_change", "sample_count", "probe_norm",
                                                 "probe_norm_change", "progress"]  # fmt: skip
    assert StateSpec.from_dict(spec.to_dict()) == spec
    builder = StateBuilder(spec)
    s1 = builder.build(1, 10, np.array([3.0, np.nan, 1.0]), np.array([4, 0, 2]), np.array([5.0, 7.0]))
    # b never seen: takes the mean of the known losses (2.0); all changes 0 on the first step
    expected1 = np.concatenate([z([3, 2, 1]), np.zeros(3), z([4, 0, 2]), z([5, 7]), np.zeros(2), [10.0]])
    np.testing.assert_allclose(s1, expected1, atol=1e-6)
    s2 = builder.build(2, 10, np.array([2.0, 4.0, np.nan]), np.array([1, 3, 0]), np.array([6.0, np.inf]))
    # c absent: carries 1.0 (change 0); b's change is against its step-1 stand-in 2.0; norm 2 carried (inf)
    loss2 = np.array([2.0, 4.0, 1.0])
    expected2 = np.concatenate([z(loss2), z(loss2 - [3, 2, 1]), z([1, 3, 0]), z([6, 7]), z([1, 0]), [20.0]])
    np.testing.assert_allclose(s2, expected2, atol=1e-6)
    assert s2.dtype == np.float32
    # z clamps to ±3
    assert zscore(np.array([0.0] * 99 + [1.0])).max() == 3.0


def test_rewards_by_hand():
    gram = np.array([[4.0, 1.0, 0.0], [1.0, 1.0, 0.5], [0.0, 0.5, 9.0]])
    present = np.array([True, True, True])
    a = np.array([0.5, 0.3, 0.2])
    w_hat = gram.sum(axis=1) / np.mean([4.0, 1.0, 9.0])
    assert alignment_reward(gram, present, a, "linear")[0] == pytest.approx(a @ w_hat)
    s = (gram.sum(axis=1) - np.diag(gram)) / np.mean([2.0, 1.0, 3.0])
    np.testing.assert_allclose(alignment_reward(gram, present, a, "paper"), z(s))
    # absent domain c: excluded from the sums and the normalisation, reward 0 in the paper form
    present = np.array([True, True, False])
    sub = gram[:2, :2]
    assert alignment_reward(gram, present, a, "linear")[0] == pytest.approx(a[:2] @ (sub.sum(1) / 2.5))
    assert alignment_reward(gram, present, a, "paper")[2] == 0.0
    bad = gram.copy()
    bad[0, 1] = np.nan
    assert alignment_reward(bad, np.ones(3, bool), a, "linear") is None
    assert alignment_reward(None, present, a, "linear") is None
    assert alignment_reward(np.zeros((3, 3)), present, a, "linear") is None  # no gradient: no scale


def make_stats(t, rng, total=20):
    tokens = rng.integers(10, 100, size=3).astype(np.float64)
    g = rng.normal(size=(3, 4))
    return StepStats(t, total, rng.uniform(1, 3, 3) * tokens, tokens, tokens / 10, gram=g @ g.T,
                     probe_norms=rng.uniform(1, 2, 2))  # fmt: skip


def test_transitions_pair_state_action_reward_correctly():
    mixer = build_mixer("acodm", DOMAINS, 20, 0, **SMALL)
    assert mixer.needs.alignment and mixer.needs.probe_norms and not mixer.needs.reference_losses
    rng = np.random.default_rng(0)
    builder = StateBuilder(StateSpec(tuple(DOMAINS), 2))
    expected = []
    prev_state = None
    for t in range(1, 4):
        action = mixer.weights()  # a_t, in force during step t
        stats = make_stats(t, rng)
        mixer.observe(stats)
        reward = alignment_reward(stats.gram, stats.token_count > 0, action, "linear")
        state = builder.build(t, 20, stats.loss_mean, stats.sample_count, stats.probe_norms)
        if prev_state is not None:
            expected.append((prev_state, action, reward, state))
        prev_state = state
    s, a, r, s2 = mixer.replay.get(mixer.replay.ordered_indices())
    assert len(s) == 2  # no transition for step 1: there is no state before the first statistics
    for i, (es, ea, er, es2) in enumerate(expected):
        np.testing.assert_allclose(s[i], es, atol=1e-6)
        np.testing.assert_allclose(a[i], ea, atol=1e-7)
        np.testing.assert_allclose(r[i], er, rtol=1e-6)
        np.testing.assert_allclose(s2[i], es2, atol=1e-6)


def test_warmup_behaviour_then_actor():
    mixer = build_mixer("acodm", DOMAINS, 20, 0, **SMALL)
    rng = np.random.default_rng(1)
    reward_hat = None
    for t in range(1, 4):
        stats = make_stats(t, rng)
        metrics = mixer.observe(stats)
        assert metrics["mixer/warmup"] == 1.0
        new = np.exp(stats.loss_mean)
        reward_hat = new if reward_hat is None else 0.5 * reward_hat + 0.5 * new  # ODM smoothed mean, α = 0.5
        eps = min(1 / 3, math.sqrt(math.log(3) / (3 * (t + 1))))
        np.testing.assert_allclose(mixer.weights(), apply_floor((1 - 3 * eps) * reward_hat / reward_hat.sum() + eps,
                                                                1e-3), atol=1e-12)  # fmt: skip
    assert mixer.ddpg.num_updates == 0
    metrics = mixer.observe(make_stats(4, rng))  # end of warm-up: BC + critic fit, targets copied
    assert metrics["mixer/warmup"] == 0.0 and "mixer/bc_loss" in metrics and "mixer/exploration" in metrics
    for p, tp in zip(mixer.ddpg.critic.parameters(), mixer.ddpg.critic_target.parameters()):
        assert torch.equal(p, tp)
    for t in range(5, 8):
        metrics = mixer.observe(make_stats(t, rng))
        assert {"mixer/critic_loss", "mixer/q", "mixer/reward"} <= set(metrics)
    assert mixer.ddpg.num_updates == 3


def test_default_warmup_is_two_percent_and_paper_reward_has_k_outputs():
    mixer = build_mixer("acodm", DOMAINS, 1000, 0, reward="paper", hidden_size=8, num_hidden_layers=1)
    assert mixer.warmup_steps == 20
    assert mixer.ddpg.critic.head.out_features == 3
    assert mixer.spec.dim == 3 * 3 + 2 * 9 + 1
    with pytest.raises(ValueError, match="Did you mean 'hidden_size'"):
        build_mixer("acodm", DOMAINS, 1000, 0, hiden_size=8)
    with pytest.raises(ValueError, match="reward"):
        build_mixer("acodm", DOMAINS, 1000, 0, reward="sparse")


def test_wrong_probe_count_is_a_clear_error():
    mixer = build_mixer("acodm", DOMAINS, 20, 0, **SMALL)
    stats = make_stats(1, np.random.default_rng(0))
    stats.probe_norms = np.ones(5)
    with pytest.raises(ValueError, match="num_probe_layers"):
        mixer.observe(stats)


def test_entropy_bonus_is_added_to_the_stored_reward():
    from acodm.mixers.acodm import normalized_entropy

    assert normalized_entropy(np.full(4, 0.25)) == pytest.approx(1.0)
    assert normalized_entropy(np.array([1.0, 0.0, 0.0])) == pytest.approx(0.0, abs=1e-12)
    beta = 0.7
    mixer = build_mixer("acodm", DOMAINS, 20, 0, entropy_coef=beta, **SMALL)
    rng = np.random.default_rng(0)
    rewards = []
    for t in range(1, 4):
        action = mixer.weights()
        stats = make_stats(t, rng)
        mixer.observe(stats)
        base = alignment_reward(stats.gram, stats.token_count > 0, action, "linear")
        rewards.append(base + beta * normalized_entropy(action))
    _, _, r, _ = mixer.replay.get(mixer.replay.ordered_indices())
    np.testing.assert_allclose(r, np.asarray(rewards[1:]), rtol=1e-6)
    with pytest.raises(ValueError, match="entropy_coef"):
        build_mixer("acodm", DOMAINS, 20, 0, entropy_coef=-1.0, **SMALL)


def test_paper_mode_fits_on_every_warmup_step_then_copies_targets():
    """reward=paper reproduces the released code: one BC / critic minibatch per warm-up step (DANG-ai/AC-ODM
    megatron/data/agent.py L434-L487), targets copied once when the warm-up ends (training.py L1548)."""
    mixer = build_mixer("acodm", DOMAINS, 20, 0, reward="paper", hidden_size=16, num_hidden_layers=2,
                        num_probe_layers=2, batch_size=2, warmup_steps=4)
    cfg = mixer.config
    assert (cfg.warmup_fit, cfg.actor_gradient, cfg.action) == ("per_step", "critic", "nominal")
    rng = np.random.default_rng(0)
    initial_target = [p.detach().clone() for p in mixer.ddpg.actor_target.parameters()]
    fitted = []
    for t in range(1, 4):
        before = [p.detach().clone() for p in mixer.ddpg.actor.parameters()]
        metrics = mixer.observe(make_stats(t, rng))
        fitted.append("mixer/bc_loss" in metrics)
        moved = any(not torch.equal(a, b) for a, b in zip(before, mixer.ddpg.actor.parameters()))
        assert moved == fitted[-1]
    assert fitted == [False, True, True]  # no transition before step 2
    assert all(torch.equal(a, b) for a, b in zip(initial_target, mixer.ddpg.actor_target.parameters()))
    metrics = mixer.observe(make_stats(4, rng))  # the warm-up ends: targets copied, then one DDPG update
    assert "mixer/q" in metrics and "mixer/bc_loss" not in metrics
    for a, b in zip(mixer.ddpg.actor.parameters(), mixer.ddpg.actor_target.parameters()):
        assert torch.allclose(a, b, atol=0.05)  # the copy, moved by one update (targets by τ of it)
    assert not all(torch.equal(a, b) for a, b in zip(initial_target, mixer.ddpg.actor_target.parameters()))
