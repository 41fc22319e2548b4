"""DDPG (Lillicrap et al. 2016) for AC-ODM, in paper order as in cleanrl's ddpg_continuous_action.py:

    target under no_grad → critic loss → critic step → actor loss (critic frozen) → actor step → Polyak

Both halves of defect 1 of the released AC-ODM code (docs/methods.md, "Defects of the released code") are
fixed here: the actor's optimizer IS stepped, and the actor loss never leaves gradients on the critic (the
critic's parameters have ``requires_grad`` switched off while the actor loss is built and back-propagated).

The task is continuing (a pretraining run has no terminal state inside it), so targets have no
(1 − done) factor: y = r + γ Q'(s', μ'(s')).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from acodm.rl.networks import Actor, Critic

OPTIMIZERS = ("adamw", "adam")


@torch.no_grad()
def polyak_update(params: Iterable[torch.Tensor], target_params: Iterable[torch.Tensor], tau: float) -> None:
    """In place: target ← (1 − τ)·target + τ·online (SB3's helper; buffers such as LayerNorm have none)."""
    for p, tp in zip(params, target_params, strict=True):
        tp.mul_(1.0 - tau).add_(p, alpha=tau)


@dataclass
class DDPGConfig:
    state_dim: int
    num_domains: int
    reward_dim: int  # critic outputs: K for the per-domain "paper" reward, 1 for the scalar one
    hidden_size: int = 1024  # paper: 1024
    num_hidden_layers: int = 5  # paper: Linear(in→1024) + 4 × Linear(1024→1024)
    gamma: float = 0.95  # discount
    tau: float = 0.001  # Polyak coefficient of the soft target update after every DDPG update
    lr_max: float = 0.01  # peak learning rate (after linear warm-up)
    lr_min: float = 0.001  # cosine decay ends here at total_steps
    lr_warmup_steps: int = 834  # linear warm-up length, in LM steps
    total_steps: int = 41_667  # LM steps of the run (the cosine's length)
    weight_decay: float = 0.1  # paper: "Adam, weight decay 0.1"
    optimizer: str = "adamw"  # "adamw": decoupled decay (default); "adam": Adam with L2 (coupled)
    action_floor: float = 0.0  # the mixer's floor: policy action = floor + (1 − K·floor)·actor(s)
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"mixing.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if not 0.0 <= self.gamma < 1.0:
            raise ValueError(f"mixing.gamma must be in [0, 1), got {self.gamma}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"mixing.tau must be in (0, 1], got {self.tau}")
        if not (self.lr_max > 0 and self.lr_min >= 0):
            raise ValueError(f"mixing.lr_max must be > 0 and lr_min >= 0, got {self.lr_max}, {self.lr_min}")


def lr_at(step: int, cfg: DDPGConfig) -> float:
    """Linear warm-up to lr_max over lr_warmup_steps, then cosine decay to lr_min at total_steps."""
    if cfg.lr_warmup_steps > 0 and step < cfg.lr_warmup_steps:
        return cfg.lr_max * (step + 1) / cfg.lr_warmup_steps
    span = max(cfg.total_steps - cfg.lr_warmup_steps, 1)
    frac = min(max((step - cfg.lr_warmup_steps) / span, 0.0), 1.0)
    return cfg.lr_min + 0.5 * (cfg.lr_max - cfg.lr_min) * (1.0 + math.cos(math.pi * frac))


class DDPG:
    """Actor, critic, their targets and optimizers. What is saved: see ``state_dict``."""

    def __init__(self, cfg: DDPGConfig, seed: int):
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        # Initialise from our own seed without disturbing (or depending on) the global torch RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.actor = Actor(cfg.state_dim, cfg.num_domains, cfg.hidden_size, cfg.num_hidden_layers)
            self.critic = Critic(
                cfg.state_dim, cfg.num_domains, cfg.reward_dim, cfg.hidden_size, cfg.num_hidden_layers
            )
        self.actor.to(self.device)
        self.critic.to(self.device)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_opt = self._make_optimizer(self.actor)
        self.critic_opt = self._make_optimizer(self.critic)
        self.num_updates = 0

    def _make_optimizer(self, module: nn.Module) -> torch.optim.Optimizer:
        lr = lr_at(0, self.cfg)
        if self.cfg.optimizer == "adamw":
            return torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=self.cfg.weight_decay)
        return torch.optim.Adam(module.parameters(), lr=lr, weight_decay=self.cfg.weight_decay)

    # ---- policy ----------------------------------------------------------------------------------

    def policy(self, actor: nn.Module, state_BS: torch.Tensor) -> torch.Tensor:
        """Actor output mixed with the floor, i.e. the weights the mixer would use. (B, K)"""
        k = self.cfg.num_domains
        return self.cfg.action_floor + (1.0 - k * self.cfg.action_floor) * actor(state_BS)

    @torch.no_grad()
    def act(self, state: np.ndarray) -> np.ndarray:
        """Deterministic actor output (softmax, no floor) for one state, float64 (K,)."""
        s = torch.as_tensor(state, dtype=torch.float32, device=self.device).unsqueeze(0)
        return self.actor(s)[0].double().cpu().numpy()

    def _tensors(self, *arrays: np.ndarray) -> list[torch.Tensor]:
        return [torch.as_tensor(a, dtype=torch.float32, device=self.device) for a in arrays]

    def set_lr(self, step: int) -> float:
        lr = lr_at(step, self.cfg)
        for opt in (self.actor_opt, self.critic_opt):
            for group in opt.param_groups:
                group["lr"] = lr
        return lr

    # ---- one DDPG update -------------------------------------------------------------------------

    def update(
        self, states: np.ndarray, actions: np.ndarray, rewards: np.ndarray, next_states: np.ndarray, step: int
    ) -> dict[str, float]:
        """One DDPG update on a minibatch; ``step`` (LM steps done) sets the learning rate."""
        lr = self.set_lr(step)
        s_BS, a_BK, r_BR, s2_BS = self._tensors(states, actions, rewards, next_states)

        # 1. TD target from the target networks, outside the graph.
        with torch.no_grad():
            q_next_BR = self.critic_target(s2_BS, self.policy(self.actor_target, s2_BS))
            target_BR = r_BR + self.cfg.gamma * q_next_BR

        # 2.-3. Critic regression to the target, critic step.
        q_BR = self.critic(s_BS, a_BK)
        critic_loss = torch.nn.functional.mse_loss(q_BR, target_BR)
        if not torch.isfinite(critic_loss):
            # Defence in depth (the mixer never stores non-finite transitions): a non-finite loss would
            # poison both networks through Adam's moments, so nothing is stepped.
            return {"mixer/ddpg_skipped": 1.0, "mixer/lr": lr}
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()

        # 4.-5. Actor ascends Q(s, μ(s)) of the just-updated critic. The critic's parameters are frozen
        # while this loss is built, so its backward leaves no gradient on them (reference defect 1).
        self.critic.requires_grad_(False)
        try:
            actor_loss = -self.critic(s_BS, self.policy(self.actor, s_BS)).mean()
            self.actor_opt.zero_grad(set_to_none=True)
            actor_loss.backward()
            self.actor_opt.step()  # the released code never calls this: its actor never learns
        finally:
            self.critic.requires_grad_(True)

        # 6. Soft target update.
        polyak_update(self.actor.parameters(), self.actor_target.parameters(), self.cfg.tau)
        polyak_update(self.critic.parameters(), self.critic_target.parameters(), self.cfg.tau)
        self.num_updates += 1
        return {
            "mixer/ddpg_skipped": 0.0,
            "mixer/critic_loss": float(critic_loss.detach()),
            "mixer/actor_loss": float(actor_loss.detach()),
            "mixer/q": float(q_BR.detach().mean()),
            "mixer/lr": lr,
        }

    # ---- actor on a known surrogate (AC-ODM's default: the critic is the step's quadratic model) ----

    def update_on_surrogate(self, states: np.ndarray, grams: np.ndarray, targets: np.ndarray, lam: float,
                            step: int) -> dict[str, float]:
        """One actor step ascending r(μ(s)) = μᵀt − (λ/2) μᵀ G μ averaged over a minibatch of steps.

        Each replayed step carries its own (normalised) Gram G (B, K, K) and target alignment t (B, K), so
        the reward of any action is known in closed form: the actor follows its exact gradient t − λ G μ
        instead of a learned critic's estimate of it (which barely correlated with the true one at the
        demo scale: README, "Mixing quality"). The actor's target network follows by Polyak averaging.
        """
        lr = self.set_lr(step)
        s_BS, g_BKK, t_BK = self._tensors(states, grams, targets)
        a_BK = self.policy(self.actor, s_BS)
        reward_B = (a_BK * t_BK).sum(-1) - 0.5 * lam * torch.einsum("bi,bij,bj->b", a_BK, g_BKK, a_BK)
        loss = -reward_B.mean()
        if not torch.isfinite(loss):
            return {"mixer/ddpg_skipped": 1.0, "mixer/lr": lr}
        self.actor_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.actor_opt.step()
        polyak_update(self.actor.parameters(), self.actor_target.parameters(), self.cfg.tau)
        self.num_updates += 1
        return {"mixer/ddpg_skipped": 0.0, "mixer/surrogate": float(reward_B.detach().mean()), "mixer/lr": lr}

    # ---- warm-up fit (paper: behaviour cloning + critic regression, then hard target copy) ---------

    def fit_warmup(
        self,
        states: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        epochs: int,
        batch_size: int,
        rng: np.random.Generator,
        step: int,
        copy_targets: bool = True,
    ) -> dict[str, float]:
        """Actor ← MSE to the behaviour actions; critic ← MSE to (1 + γ)·r; then targets ← online (unless
        ``copy_targets`` is False: the per-step warm-up copies them once, at its end).

        (1 + γ)·r is the paper's stand-in for Q under the behaviour policy: the immediate reward plus one
        discounted step of the same reward, i.e. a two-step return with r_{t+1} ≈ r_t. It gives the critic
        the right scale and ranking of actions cheaply; the TD updates refine it afterwards.
        """
        self.set_lr(step)
        n = len(states)
        actor_loss = critic_loss = float("nan")
        for _ in range(epochs):
            order = rng.permutation(n)
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                s_BS, a_BK, r_BR = self._tensors(states[idx], actions[idx], rewards[idx])
                loss_a = torch.nn.functional.mse_loss(self.policy(self.actor, s_BS), a_BK)
                self.actor_opt.zero_grad(set_to_none=True)
                loss_a.backward()
                self.actor_opt.step()
                loss_c = torch.nn.functional.mse_loss(self.critic(s_BS, a_BK), (1.0 + self.cfg.gamma) * r_BR)
                self.critic_opt.zero_grad(set_to_none=True)
                loss_c.backward()
                self.critic_opt.step()
                actor_loss, critic_loss = float(loss_a.detach()), float(loss_c.detach())
        if copy_targets:
            self.copy_targets()
        return {"mixer/bc_loss": actor_loss, "mixer/critic_loss": critic_loss}

    def copy_targets(self) -> None:
        """Targets ← online networks (the hard copy at the end of the warm-up)."""
        self.actor_target.load_state_dict(self.actor.state_dict())
        self.critic_target.load_state_dict(self.critic.state_dict())

    # ---- state -----------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "actor_target": self.actor_target.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
            "num_updates": self.num_updates,
        }

    def load_state_dict(self, sd: dict) -> None:
        self.actor.load_state_dict(sd["actor"])
        self.critic.load_state_dict(sd["critic"])
        self.actor_target.load_state_dict(sd["actor_target"])
        self.critic_target.load_state_dict(sd["critic_target"])
        self.actor_opt.load_state_dict(sd["actor_opt"])
        self.critic_opt.load_state_dict(sd["critic_opt"])
        self.num_updates = int(sd["num_updates"])
