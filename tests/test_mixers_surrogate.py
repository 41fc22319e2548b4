"""AC-ODM's default design: the concave surrogate, its known-gradient actor, realised-share actions, the
cross-step Gram, targets; and the trainer's side of them (weights in force, target probe)."""

import numpy as np
import pytest
import torch

from acodm.alignment import packed_cross_gram, packed_gram
from acodm.mixers import StepStats, build_mixer
from acodm.mixers.acodm import surrogate_reward, surrogate_terms
from acodm.mixers.base import is_valid_weights
from acodm.rl.ddpg import DDPG, DDPGConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = dict(hidden_size=16, num_hidden_layers=2, num_probe_layers=2, batch_size=4, warmup_steps=2,
             warmup_fit_epochs=1, floor=0.05)  # fmt: skip


def _random_psd(rng, k):
    a = rng.normal(size=(k, 2 * k))
    return a @ a.T / (2 * k)


def test_surrogate_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    k = 5
    g, t = _random_psd(rng, k), rng.normal(size=k)
    a = rng.dirichlet(np.ones(k))
    lam = 0.7
    analytic = t - lam * g @ a  # ∇_a [aᵀt − (λ/2) aᵀGa] for symmetric G
    eps = 1e-6
    numeric = np.array([(surrogate_reward(a + eps * e, g, t, lam) - surrogate_reward(a - eps * e, g, t, lam))
                        / (2 * eps) for e in np.eye(k)])
    np.testing.assert_allclose(numeric, analytic, rtol=1e-6, atol=1e-8)
    # the identity the docstring states: r(a) = −(1/2λ)‖λ Σ a_k g_k − g_T‖² + const, with g_T = Σ c_k g_k
    feats = rng.normal(size=(k, 7))
    c = rng.dirichlet(np.ones(k))
    g, t = feats @ feats.T, feats @ feats.T @ c
    b = rng.dirichlet(np.ones(k))
    lhs = surrogate_reward(a, g, t, lam) - surrogate_reward(b, g, t, lam)
    rhs = -(np.sum((lam * a @ feats - c @ feats) ** 2) - np.sum((lam * b @ feats - c @ feats) ** 2)) / (2 * lam)
    assert lhs == pytest.approx(rhs, rel=1e-9)


def test_known_gradient_actor_reaches_the_surrogate_optimum():
    """On a fixed Gram with the targets among the training domains, the optimum is the targets' uniform
    mixture; the actor's own updates (autograd through the softmax) must get there."""
    k = 4
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(k, 16))
    g = feats @ feats.T
    g = g / np.diag(g).mean()
    c = np.array([0.5, 0.5, 0.0, 0.0])  # targets: domains 0 and 1
    t = g @ c
    cfg = DDPGConfig(state_dim=3, num_domains=k, reward_dim=1, hidden_size=16, num_hidden_layers=2, lr_max=3e-3,
                     lr_min=3e-3, lr_warmup_steps=0, total_steps=10, weight_decay=0.0, action_floor=0.0)
    ddpg = DDPG(cfg, seed=0)
    states = rng.normal(size=(8, 3)).astype(np.float32)
    before = surrogate_reward(ddpg.act(states[0]), g, t, 1.0)
    for _ in range(800):
        ddpg.update_on_surrogate(states, np.repeat(g[None], 8, 0), np.repeat(t[None], 8, 0), lam=1.0, step=5)
    w = ddpg.act(states[0])
    assert surrogate_reward(w, g, t, 1.0) > before
    np.testing.assert_allclose(w, c, atol=0.05)


def test_surrogate_terms_cross_step_and_targets():
    gram = np.array([[4.0, 1.0, 0.5], [1.0, 2.0, 0.0], [0.5, 0.0, 6.0]])
    cross = np.array([[1.0, 9.0, 9.0], [9.0, -0.5, 9.0], [9.0, 9.0, 3.0]])  # only the diagonal is used
    base = dict(step=3, total_steps=10, loss_sum=np.ones(3), token_count=np.full(3, 10.0), sample_count=np.ones(3),
                gram=gram, gram_cross=cross)
    # every domain a target: t = mean of the rows, self terms replaced by the cross-step diagonal
    g_hat, t_hat = surrogate_terms(StepStats(**base), "cross_step")
    debiased = gram - np.diag(np.diag(gram)) + np.diag([1.0, 0.0, 3.0])  # negative estimate clamped at 0
    scale = np.mean([1.0, 0.0, 3.0])
    np.testing.assert_allclose(g_hat, debiased / scale)
    np.testing.assert_allclose(t_hat, debiased.mean(axis=1) / scale)
    # told the targets {0, 2}: target_alignment is <g_i, (g_0 + g_2)/2> with the same-step self terms
    target = gram[:, [0, 2]].mean(axis=1)
    stats = StepStats(**base, target_alignment=target, num_targets=2, target_mask=np.array([1.0, 0.0, 1.0]))
    g_hat, t_hat = surrogate_terms(stats, "cross_step")
    np.testing.assert_allclose(t_hat, debiased[:, [0, 2]].mean(axis=1) / scale)
    # same-step keeps the Gram; without a previous step the cross-step form has nothing to give
    g_same, _ = surrogate_terms(StepStats(**base), "same_step")
    np.testing.assert_allclose(g_same, gram / np.diag(gram).mean())
    assert surrogate_terms(StepStats(**{**base, "gram_cross": None}), "cross_step") is None


def test_cross_gram_of_a_step_with_itself_is_its_gram():
    rng = np.random.default_rng(2)
    k, blocks = 3, [3 * 4, 3 * 6]
    packed = torch.from_numpy(rng.normal(size=sum(blocks)))
    other = torch.from_numpy(rng.normal(size=sum(blocks)))
    counts, other_counts = np.array([2.0, 0.0, 5.0]), np.array([1.0, 3.0, 4.0])
    np.testing.assert_allclose(packed_cross_gram(packed, counts, packed, counts, k, blocks),
                               packed_gram(packed, counts, k, blocks))
    cross = packed_cross_gram(packed, counts, other, other_counts, k, blocks)
    np.testing.assert_allclose(cross, packed_cross_gram(other, other_counts, packed, counts, k, blocks).T)
    assert np.all(cross[1] == 0)  # domain 1 had no tokens this step


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_actions_stay_on_the_simplex_under_bad_statistics(bad):
    domains = ["a", "b", "c", "d"]
    mixer = build_mixer("acodm", domains, total_steps=30, seed=0, **SMALL)
    rng = np.random.default_rng(3)
    for t in range(1, 30):
        gram = _random_psd(rng, 4)
        cross = _random_psd(rng, 4)
        if t % 3 == 0:
            gram[1, 2] = gram[2, 1] = bad
        if t % 4 == 0:
            cross[0, 0] = bad
        target = np.full(4, bad) if t % 5 == 0 else gram[:, :2].mean(axis=1)
        counts = rng.integers(1, 5, size=4).astype(float)
        stats = StepStats(step=t, total_steps=30, loss_sum=counts * 3.0, token_count=counts * 8,
                          sample_count=counts, gram=gram, gram_cross=cross, probe_norms=np.ones(2),
                          target_alignment=target, num_targets=2, target_mask=np.array([1.0, 1.0, 0, 0]),
                          weights=mixer.weights())
        mixer.observe(stats)
        assert is_valid_weights(mixer.weights(), mixer.floor), (t, mixer.weights())


def test_realised_shares_equal_the_plans_counts(tmp_path):
    from neox.data import MicroBatchLoader, MixturePlan, open_domains
    from tests.synthetic_data import write_synthetic_domains

    write_synthetic_domains(str(tmp_path / "d"), num_domains=4, docs_per_domain=40, vocab_size=64, seed=0)
    corpus = open_domains(str(tmp_path / "d"), seq_len_tokens=16)
    plan = MixturePlan([ds.num_samples for ds in corpus.datasets], global_batch_sequences=32, seed=0,
                       min_samples_per_domain=1)
    loader = MicroBatchLoader(corpus, plan, micro_batch_sequences=8)
    for weights in ([0.97, 0.01, 0.01, 0.01], [0.25, 0.25, 0.25, 0.25], [0.1, 0.6, 0.3, 0.0]):
        plan.set_weights(np.asarray(weights))
        domains = torch.cat([d for _, d in loader.next_step()]).numpy()
        counts = np.bincount(domains, minlength=4).astype(float)
        stats = StepStats(step=1, total_steps=2, loss_sum=counts, token_count=counts * 16, sample_count=counts)
        np.testing.assert_allclose(stats.realised_shares, plan.counts_per_batch / 32)
    # nominal 0.97 is not what the batch holds when every domain is forced once
    assert stats.realised_shares.sum() == pytest.approx(1.0)


def test_acodm_records_the_realised_shares_as_its_action():
    mixer = build_mixer("acodm", ["a", "b"], total_steps=10, seed=0, reward="linear", actor_gradient="critic",
                        **{**SMALL, "num_probe_layers": 0})
    stats = [StepStats(step=t, total_steps=10, loss_sum=np.array([3.0, 1.0]), token_count=np.array([24.0, 8.0]),
                       sample_count=np.array([3.0, 1.0]), gram=np.eye(2), weights=np.array([0.9, 0.1]))
             for t in (1, 2)]
    for s in stats:
        mixer.observe(s)
    _, actions, _, _ = mixer.replay.get(mixer.replay.ordered_indices())
    np.testing.assert_allclose(actions[0], [0.75, 0.25])  # 3 of 4 sequences, not the nominal 0.9
