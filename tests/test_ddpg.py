"""DDPG pieces: one update against a hand-written reference, Polyak, replay FIFO, LR schedule, sizes."""

import copy

import numpy as np
import pytest
import torch

from acodm.rl import DDPG, DDPGConfig, ReplayBuffer, lr_at, polyak_update
from acodm.rl.exploration import LogitGaussianNoise
from acodm.rl.networks import Actor, Critic, count_parameters


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(**overrides) -> DDPGConfig:
    base = dict(state_dim=3, num_domains=2, reward_dim=1, hidden_size=5, num_hidden_layers=1, gamma=0.9, tau=0.1,
                lr_max=0.01, lr_min=0.01, lr_warmup_steps=0, total_steps=10, weight_decay=0.1,
                optimizer="adamw", action_floor=0.05)  # fmt: skip
    base.update(overrides)
    return DDPGConfig(**base)


def batch(seed=0, n=4, state_dim=3, k=2, reward_dim=1):
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(n, state_dim)).astype(np.float32)
    a = rng.dirichlet(np.ones(k), size=n).astype(np.float32)
    r = rng.normal(size=(n, reward_dim)).astype(np.float32)
    s2 = rng.normal(size=(n, state_dim)).astype(np.float32)
    return s, a, r, s2


def adamw_first_step(p, g, lr, wd, eps=1e-8):
    # Adam's first step with bias correction: m̂ = g, v̂ = g², so the step is lr·g/(|g| + eps);
    # AdamW decays the weights first (decoupled): p ← p·(1 − lr·wd).
    return p * (1 - lr * wd) - lr * g / (g.abs() + eps)


@pytest.mark.parametrize("reward_dim", [1, 2])
def test_one_update_matches_hand_computation(reward_dim):
    cfg = tiny_config(reward_dim=reward_dim)
    agent = DDPG(cfg, seed=3)
    s, a, r, s2 = batch(reward_dim=reward_dim)
    actor0, critic0 = copy.deepcopy(agent.actor), copy.deepcopy(agent.critic)
    actor_t0, critic_t0 = copy.deepcopy(agent.actor_target), copy.deepcopy(agent.critic_target)
    metrics = agent.update(s, a, r, s2, step=0)

    k, f, lr, wd, gamma, tau = 2, cfg.action_floor, cfg.lr_max, cfg.weight_decay, cfg.gamma, cfg.tau
    S, A, R, S2 = (torch.tensor(x) for x in (s, a, r, s2))
    with torch.no_grad():
        y = R + gamma * critic_t0(S2, f + (1 - k * f) * actor_t0(S2))  # TD target
    critic_params = list(critic0.parameters())
    critic_loss = ((critic0(S, A) - y) ** 2).mean()
    critic_grads = torch.autograd.grad(critic_loss, critic_params)
    assert metrics["mixer/critic_loss"] == pytest.approx(float(critic_loss.detach()), rel=1e-5)
    critic1 = copy.deepcopy(critic0)
    with torch.no_grad():
        for p, g in zip(critic1.parameters(), critic_grads):
            p.copy_(adamw_first_step(p, g, lr, wd))
    actor_params = list(actor0.parameters())
    actor_loss = -critic1(S, f + (1 - k * f) * actor0(S)).mean()
    actor_grads = torch.autograd.grad(actor_loss, actor_params)
    actor1 = copy.deepcopy(actor0)
    with torch.no_grad():
        for p, g in zip(actor1.parameters(), actor_grads):
            p.copy_(adamw_first_step(p, g, lr, wd))
    assert metrics["mixer/actor_loss"] == pytest.approx(float(actor_loss.detach()), rel=1e-5)

    for mine, ref in zip(agent.critic.parameters(), critic1.parameters()):
        torch.testing.assert_close(mine, ref, atol=1e-6, rtol=1e-5)
    for mine, ref in zip(agent.actor.parameters(), actor1.parameters()):
        torch.testing.assert_close(mine, ref, atol=1e-6, rtol=1e-5)
    # Polyak: target ← (1 − τ) target + τ online(after the step)
    for mine, t0, new in zip(agent.actor_target.parameters(), actor_t0.parameters(), actor1.parameters()):
        torch.testing.assert_close(mine, (1 - tau) * t0 + tau * new, atol=1e-6, rtol=1e-5)
    for mine, t0, new in zip(agent.critic_target.parameters(), critic_t0.parameters(), critic1.parameters()):
        torch.testing.assert_close(mine, (1 - tau) * t0 + tau * new, atol=1e-6, rtol=1e-5)
    # The actor loss left the critic's gradients exactly as the critic loss made them (reference defect 1).
    for p, g in zip(agent.critic.parameters(), critic_grads):
        torch.testing.assert_close(p.grad, g, atol=1e-7, rtol=1e-6)


def test_actor_is_actually_stepped():
    agent = DDPG(tiny_config(hidden_size=16), seed=0)
    before = [p.detach().clone() for p in agent.actor.parameters()]
    agent.update(*batch(1), step=0)
    changed = [not torch.equal(b, p) for b, p in zip(before, agent.actor.parameters())]
    assert all(changed)
    assert all(p.requires_grad for p in agent.critic.parameters())  # unfrozen again after the actor step


def test_non_finite_batch_steps_nothing():
    agent = DDPG(tiny_config(), seed=0)
    before = copy.deepcopy(agent.state_dict())
    s, a, r, s2 = batch(3)
    r[0, 0] = np.nan
    metrics = agent.update(s, a, r, s2, step=0)
    assert metrics["mixer/ddpg_skipped"] == 1.0
    for name in ("actor", "critic", "actor_target", "critic_target"):
        for key, value in before[name].items():
            assert torch.equal(agent.state_dict()[name][key], value)
    assert agent.actor_opt.state_dict()["state"] == {}  # Adam's moments untouched


def test_adam_l2_option_differs_from_adamw():
    s, a, r, s2 = batch(2)
    w = DDPG(tiny_config(optimizer="adamw"), seed=0)
    l2 = DDPG(tiny_config(optimizer="adam"), seed=0)
    w.update(s, a, r, s2, step=0)
    l2.update(s, a, r, s2, step=0)
    assert isinstance(l2.actor_opt, torch.optim.Adam) and not isinstance(l2.actor_opt, torch.optim.AdamW)
    assert not torch.equal(w.actor.head.weight, l2.actor.head.weight)


def test_polyak_update():
    online = [torch.tensor([1.0, 2.0]), torch.tensor([[3.0]])]
    target = [torch.tensor([0.0, 0.0]), torch.tensor([[1.0]])]
    ptr = target[0].data_ptr()
    polyak_update(online, target, 0.25)
    torch.testing.assert_close(target[0], torch.tensor([0.25, 0.5]))
    torch.testing.assert_close(target[1], torch.tensor([[1.5]]))
    assert target[0].data_ptr() == ptr  # in place


def test_replay_fifo_and_capacity():
    buf = ReplayBuffer(capacity=3, state_dim=1, num_domains=2, reward_dim=1)
    for i in range(5):
        buf.add(np.array([i]), np.array([i, -i]), np.array([10 * i]), np.array([i + 1]))
    assert len(buf) == 3
    s, a, r, s2 = buf.get(buf.ordered_indices())
    np.testing.assert_array_equal(s[:, 0], [2, 3, 4])  # the two oldest were overwritten
    np.testing.assert_array_equal(r[:, 0], [20, 30, 40])
    clone = ReplayBuffer(3, 1, 2, 1)
    clone.load_state_dict(buf.state_dict())
    np.testing.assert_array_equal(clone.get(clone.ordered_indices())[0][:, 0], [2, 3, 4])
    clone.add(np.array([5]), np.array([0, 0]), np.array([0]), np.array([0]))
    buf.add(np.array([5]), np.array([0, 0]), np.array([0]), np.array([0]))
    np.testing.assert_array_equal(clone.get(clone.ordered_indices())[0], buf.get(buf.ordered_indices())[0])
    sample = buf.sample(2, np.random.default_rng(0))[0][:, 0]
    assert len(set(sample.tolist())) == 2 and set(sample.tolist()) <= {3, 4, 5}


def test_lr_schedule():
    cfg = tiny_config(lr_max=0.01, lr_min=0.001, lr_warmup_steps=10, total_steps=110)
    assert lr_at(0, cfg) == pytest.approx(0.001)
    assert lr_at(9, cfg) == pytest.approx(0.01)
    assert lr_at(60, cfg) == pytest.approx(0.0055)  # half-way through the cosine
    assert lr_at(110, cfg) == pytest.approx(0.001) and lr_at(500, cfg) == pytest.approx(0.001)


def test_exploration_stays_on_simplex_and_decays():
    noise = LogitGaussianNoise(0.5, 0.05)
    assert noise.sigma(0, 100) == 0.5 and noise.sigma(100, 100) == pytest.approx(0.05)
    rng = np.random.default_rng(0)
    for k in (2, 7, 40):
        p = rng.dirichlet(np.ones(k))
        p[0] = 0.0
        p /= p.sum()
        q = noise.perturb(p, 2.0, rng)
        assert np.all(np.isfinite(q)) and np.all(q >= 0) and abs(q.sum() - 1) < 1e-12


def test_warmup_fit_clones_behaviour_and_copies_targets():
    cfg = tiny_config(hidden_size=32, num_hidden_layers=2, lr_max=0.01, lr_min=0.01)
    agent = DDPG(cfg, seed=0)
    rng = np.random.default_rng(0)
    s = rng.normal(size=(64, 3)).astype(np.float32)
    a = np.tile(np.array([[0.8, 0.2]], dtype=np.float32), (64, 1))
    r = rng.normal(size=(64, 1)).astype(np.float32)
    with torch.no_grad():
        mse_before = float(((agent.policy(agent.actor, torch.tensor(s)) - torch.tensor(a)) ** 2).mean())
    agent.fit_warmup(s, a, r, epochs=10, batch_size=16, rng=rng, step=0)
    with torch.no_grad():
        mse_after = float(((agent.policy(agent.actor, torch.tensor(s)) - torch.tensor(a)) ** 2).mean())
    assert mse_after < 0.1 * mse_before
    for p, t in zip(agent.actor.parameters(), agent.actor_target.parameters()):
        assert torch.equal(p, t)


def test_paper_size_parameter_count():
    k, state_dim, h = 22, 3 * 22 + 2 * 9 + 1, 1024
    actor = Actor(state_dim, k, hidden_size=h, num_hidden_layers=5)
    critic = Critic(state_dim, k, num_outputs=k, hidden_size=h, num_hidden_layers=5)
    # input Linear + LN, 4 × (Linear + LN), head
    expected_actor = (state_dim * h + h + 2 * h) + 4 * (h * h + h + 2 * h) + (h * k + k)
    assert state_dim == 85
    assert count_parameters(actor) == expected_actor == 4_319_254  # "≈4.3M" in the paper
    assert count_parameters(critic) == expected_actor + k * h
