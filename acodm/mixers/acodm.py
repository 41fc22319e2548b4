"""AC-ODM (arXiv 2505.23878): a DDPG actor-critic that maps training statistics to domain weights.

Per optimizer step t (``observe(stats_t)``):

    a_t          the weights in force during step t (chosen after step t−1 from state s_{t−1})
    r_t          reward of a_t, from step t's gradient Gram matrix (the gradients were taken on the batch
                 sampled with a_t, so the reward observed at step t belongs to the action of step t)
    s_t          state built from step t's statistics (acodm/state.py); it exists before a_{t+1} is chosen
    transition   (s_{t−1}, a_t, r_t, s_t) goes to the replay buffer (none at t = 1: no s_0 exists)
    a_{t+1}      warm-up: ODM smoothed-mean behaviour (α = 0.5) from the losses;
                 afterwards: floor(explore(actor(s_t))), after one DDPG update on a replay minibatch

At the end of the warm-up (t = warmup_steps) the actor is behaviour-cloned to the stored behaviour
actions (MSE), the critic regressed to (1 + γ)·r, and the targets copied from the online networks.

Rewards (``reward``):
- "linear" (default): scalar r_t = Σ_k a_t,k Ŵ_t,k, W_k = ⟨g_k, Σ_j g_j⟩ = Σ_j G_kj over present domains,
  Ŵ = W / mean_k ‖g_k‖² (mean of the Gram diagonal over present domains). Σ_k a_k W_k is the first-order
  decrease of the summed domain losses along the step direction Σ_k a_k g_k (DoGE's argument); dividing
  by the mean squared gradient norm makes it scale-free as the gradients shrink over training. The
  critic has one output.
- "paper": per-domain s_i = Σ_{j≠i} G_ij / mean_k ‖g_k‖, r = z(s) over present domains (0 for absent),
  K critic outputs, the actor maximises their mean. Kept for comparison: its mean over domains is 0 by
  construction (methods.md defect 2).

``acodm_frozen`` drives a run with an exported actor: no critic, no reward, no alignment statistics.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from acodm.mixers.base import (
    Mixer,
    MixerNeeds,
    StepStats,
    apply_floor,
    resolve_initial_weights,
    rng_state,
    set_rng_state,
)
from acodm.mixers.odm import SmoothedMeanSampler, exp3_epsilon
from acodm.rl.ddpg import DDPG, DDPGConfig
from acodm.rl.exploration import LogitGaussianNoise
from acodm.rl.replay import ReplayBuffer
from acodm.state import StateBuilder, StateSpec, zscore

REWARDS = ("linear", "paper")


def default_warmup_steps(total_steps: int) -> int:
    """The paper's 834 of 41,667 steps: 2% of the run."""
    return int(round(0.02 * total_steps))


@dataclass
class ACODMConfig:
    reward: str = "linear"  # "linear" (scalar surrogate, 1-output critic) | "paper" (per-domain z, K outputs)
    # β of the entropy bonus r += β·H(a)/ln K. The linear surrogate is linear in a, so its maximiser on the
    # simplex is a vertex: without a bonus the policy learns to put all weight on one domain (seen on the
    # demo corpus, README "Results"). With it the per-step optimum is a ∝ exp(Ŵ·ln K/β), the closed form of
    # DoGE's entropic mirror step. 0 = the paper's reward unchanged.
    entropy_coef: float = 0.0
    progress_scale: float = 100.0  # progress feature = step/total × this (paper: 100, a percentage)
    num_probe_layers: int = 9  # P: state probe matrices the trainer reports (paper: 9); dim = 3K + 2P + 1
    warmup_steps: int | None = None  # behaviour-policy steps; None = 2% of total_steps (paper: 834)
    warmup_alpha: float = 0.5  # smoothing of the ODM smoothed-mean behaviour policy (paper: 0.5)
    warmup_fit_epochs: int = 5  # passes over the replay buffer for the end-of-warm-up BC / critic fit
    hidden_size: int = 1024  # network width (paper: 1024)
    num_hidden_layers: int = 5  # Linear+LayerNorm+ReLU blocks (paper: 1 input + 4 hidden = 5)
    gamma: float = 0.95  # discount
    tau: float = 0.001  # Polyak coefficient
    lr_max: float = 0.01  # actor/critic peak learning rate
    lr_min: float = 0.001  # cosine floor at the end of the run
    lr_warmup_steps: int | None = None  # linear LR warm-up; None = warmup_steps (paper: 834 for both)
    weight_decay: float = 0.1  # paper: 0.1
    optimizer: str = "adamw"  # "adamw" (decoupled weight decay) | "adam" (Adam with L2 in the gradient)
    replay_capacity: int = 10_000  # FIFO
    batch_size: int = 32  # DDPG minibatch (per update; one update per observe once the buffer has this many)
    exploration_sigma_start: float = 0.5  # logit-space Gaussian noise scale at step 0 (see rl/exploration.py)
    exploration_sigma_end: float = 0.05  # ... decayed linearly to this at total_steps
    floor: float = 1e-3  # min weight of every domain
    initial_weights: dict[str, float] | None = None  # weights of step 1; None = uniform
    device: str = "cpu"  # where the networks live ("cuda" on the trainer's rank 0 at paper size)

    def __post_init__(self) -> None:
        if self.reward not in REWARDS:
            raise ValueError(f"mixing.reward must be one of {REWARDS}, got {self.reward!r}")
        if self.num_probe_layers < 0:
            raise ValueError(f"mixing.num_probe_layers must be >= 0, got {self.num_probe_layers}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"mixing.warmup_steps must be >= 0 or null, got {self.warmup_steps}")
        if self.batch_size < 1:
            raise ValueError(f"mixing.batch_size must be >= 1, got {self.batch_size}")
        if not (self.entropy_coef >= 0 and np.isfinite(self.entropy_coef)):
            raise ValueError(f"mixing.entropy_coef must be a finite number >= 0, got {self.entropy_coef}")
        if not 0.0 <= self.warmup_alpha < 1.0:
            raise ValueError(f"mixing.warmup_alpha must be in [0, 1), got {self.warmup_alpha}")


@dataclass
class ACODMFrozenConfig:
    actor: str | None = None  # directory written by tools/export_actor.py (required)
    warmup_steps: int | None = None  # ODM behaviour steps before the actor takes over; None = 2% of run
    warmup_alpha: float = 0.5  # behaviour-policy smoothing
    floor: float = 1e-3  # min weight of every domain
    initial_weights: dict[str, float] | None = None  # weights of step 1; None = uniform
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not self.actor:
            raise ValueError("mixing.actor is required for acodm_frozen: the directory of an exported actor")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"mixing.warmup_steps must be >= 0 or null, got {self.warmup_steps}")


def alignment_reward(
    gram: np.ndarray | None, present: np.ndarray, action: np.ndarray, kind: str
) -> np.ndarray | None:
    """Reward of ``action`` from a step's Gram matrix; None if it cannot be computed (skipped step)."""
    if gram is None or not present.any():
        return None
    gram = np.asarray(gram, dtype=np.float64)
    sub = gram[np.ix_(present, present)]  # (Kp, Kp)
    if not np.all(np.isfinite(sub)):
        return None
    k = len(present)
    diag = np.maximum(np.diag(sub), 0.0)
    with np.errstate(all="ignore"):
        if kind == "linear":
            scale = float(diag.mean())
            if not (np.isfinite(scale) and scale > 0):
                return None
            w_hat = np.zeros(k)
            w_hat[present] = sub.sum(axis=1) / scale
            reward = np.array([float(np.asarray(action, dtype=np.float64) @ w_hat)])
        else:
            scale = float(np.sqrt(diag).mean())
            if not (np.isfinite(scale) and scale > 0):
                return None
            s = (sub.sum(axis=1) - np.diag(sub)) / scale
            reward = np.zeros(k)
            reward[present] = zscore(s)
    # The replay buffer stores float32: a reward that is finite only in float64 would become inf there.
    ok = np.all(np.isfinite(reward)) and np.all(np.abs(reward) < 1e30)
    return reward if ok else None


def normalized_entropy(weights: np.ndarray) -> float:
    """H(w) / ln K in [0, 1] (1 = uniform), so the entropy bonus's scale does not depend on K."""
    w = np.clip(np.asarray(weights, dtype=np.float64), 1e-300, None)
    k = len(w)
    return float(-(w * np.log(w)).sum() / np.log(k)) if k > 1 else 0.0


class _WarmupBehaviour:
    """The ODM smoothed-mean sampler as AC-ODM's warm-up behaviour (shared by acodm and acodm_frozen)."""

    def __init__(self, num_domains: int, alpha: float):
        self.sampler = SmoothedMeanSampler(num_domains, alpha)

    def next_weights(self, stats: StepStats, present: np.ndarray) -> tuple[np.ndarray, int]:
        skipped = self.sampler.update(stats.loss_mean, present)
        eps = exp3_epsilon(stats.step + 1, self.sampler.num_domains)
        return self.sampler.distribution(eps), skipped


class ACODMMixer(Mixer):
    method = "acodm"
    needs = MixerNeeds(alignment=True, probe_norms=True)

    def __init__(self, domains: list[str], total_steps: int, seed: int, config: ACODMConfig):
        super().__init__(domains, config.floor, total_steps, seed)
        self.config = config
        self.warmup_steps = (
            default_warmup_steps(total_steps) if config.warmup_steps is None else config.warmup_steps
        )
        self.spec = StateSpec(tuple(self.domains), config.num_probe_layers, progress_scale=config.progress_scale)
        self.builder = StateBuilder(self.spec)
        reward_dim = 1 if config.reward == "linear" else self.num_domains
        self.ddpg_config = DDPGConfig(
            state_dim=self.spec.dim,
            num_domains=self.num_domains,
            reward_dim=reward_dim,
            hidden_size=config.hidden_size,
            num_hidden_layers=config.num_hidden_layers,
            gamma=config.gamma,
            tau=config.tau,
            lr_max=config.lr_max,
            lr_min=config.lr_min,
            lr_warmup_steps=self.warmup_steps if config.lr_warmup_steps is None else config.lr_warmup_steps,
            total_steps=total_steps,
            weight_decay=config.weight_decay,
            optimizer=config.optimizer,
            action_floor=config.floor,
            device=config.device,
        )
        self.ddpg = DDPG(self.ddpg_config, seed)
        self.replay = ReplayBuffer(config.replay_capacity, self.spec.dim, self.num_domains, reward_dim)
        self.noise = LogitGaussianNoise(config.exploration_sigma_start, config.exploration_sigma_end)
        self.rng = np.random.default_rng(seed)  # exploration noise and replay sampling
        self.behaviour = _WarmupBehaviour(self.num_domains, config.warmup_alpha)
        self._weights = resolve_initial_weights(config.initial_weights, self.domains, self.floor)
        self._prev_state: np.ndarray | None = None  # s_{t−1}, the state a_t was chosen from
        self._warmup_fitted = self.warmup_steps == 0
        self._last_step = 0

    def _observe(self, stats: StepStats) -> dict[str, float]:
        t = stats.step
        action = self._weights  # a_t: the weights in force during step t
        present = self._present(stats)
        tokens = np.asarray(stats.token_count, dtype=np.float64)
        self._skipped_total += int(np.sum((tokens > 0) & ~np.isfinite(stats.loss_mean)))
        metrics: dict[str, float] = {}

        reward = alignment_reward(stats.gram, np.asarray(stats.token_count) > 0, action, self.config.reward)
        if reward is not None and self.config.entropy_coef > 0:
            reward = reward + self.config.entropy_coef * normalized_entropy(action)
        if reward is None:
            self._skipped_total += 1  # no transition this step (missing / non-finite Gram)
        else:
            metrics["mixer/reward"] = float(reward.mean())
        state = self.builder.build(t, stats.total_steps, stats.loss_mean, stats.sample_count, stats.probe_norms)
        if self._prev_state is not None and reward is not None:
            self.replay.add(self._prev_state, action, reward, state)
        self._prev_state = state

        behaviour_weights, skipped = self.behaviour.next_weights(stats, present)
        self._skipped_total += skipped
        if t < self.warmup_steps:
            self._set_weights(behaviour_weights)
            metrics["mixer/warmup"] = 1.0
        else:
            if not self._warmup_fitted:
                if len(self.replay) > 0:
                    s, a, r, _ = self.replay.get(self.replay.ordered_indices())
                    metrics.update(
                        self.ddpg.fit_warmup(s, a, r, self.config.warmup_fit_epochs, self.config.batch_size,
                                             self.rng, t)  # fmt: skip
                    )
                self._warmup_fitted = True
            elif len(self.replay) >= self.config.batch_size:
                metrics.update(self.ddpg.update(*self.replay.sample(self.config.batch_size, self.rng), step=t))
                self._skipped_total += int(metrics["mixer/ddpg_skipped"])
            sigma = self.noise.sigma(t, self.total_steps)
            policy = self.ddpg.act(state)
            if not np.all(np.isfinite(policy)):
                self._skipped_total += 1  # apply_floor falls back to uniform; reported, never propagated
            explored = self.noise.perturb(policy, sigma, self.rng)
            self._set_weights(explored)
            metrics["mixer/exploration"] = sigma
            metrics["mixer/warmup"] = 0.0
        metrics["mixer/replay_size"] = float(len(self.replay))
        self._last_step = t
        return metrics

    def actor_weights(self, state: np.ndarray) -> np.ndarray:
        """Deterministic policy weights (floor applied, no exploration) for a state vector."""
        return apply_floor(self.ddpg.act(state), self.floor)

    def _state_dict(self) -> dict:
        return {
            "config": asdict(self.config),
            "state_spec": self.spec.to_dict(),
            "warmup_steps": self.warmup_steps,
            "ddpg": self.ddpg.state_dict(),
            "replay": self.replay.state_dict(),
            "rng": rng_state(self.rng),
            "builder": self.builder.state_dict(),
            "behaviour": self.behaviour.sampler.state_dict(),
            "prev_state": self._prev_state,
            "warmup_fitted": self._warmup_fitted,
            "step": self._last_step,
        }

    def _load_state_dict(self, sd: dict) -> None:
        self.spec.check_compatible(StateSpec.from_dict(sd["state_spec"]), what="the saved AC-ODM state")
        self.warmup_steps = int(sd["warmup_steps"])
        self.ddpg.load_state_dict(sd["ddpg"])
        self.replay.load_state_dict(sd["replay"])
        set_rng_state(self.rng, sd["rng"])
        self.builder.load_state_dict(sd["builder"])
        self.behaviour.sampler.load_state_dict(sd["behaviour"])
        prev = sd["prev_state"]
        self._prev_state = None if prev is None else np.asarray(prev, dtype=np.float32).copy()
        self._warmup_fitted = bool(sd["warmup_fitted"])
        self._last_step = int(sd["step"])


class ACODMFrozenMixer(Mixer):
    method = "acodm_frozen"
    needs = MixerNeeds(probe_norms=True)

    def __init__(self, domains: list[str], total_steps: int, seed: int, config: ACODMFrozenConfig):
        super().__init__(domains, config.floor, total_steps, seed)
        from acodm.export import load_actor, read_actor_metadata

        self.config = config
        metadata = read_actor_metadata(config.actor)
        trained_spec = StateSpec.from_dict(metadata["state_spec"])
        # This run's spec: its own domains, the probe count the actor was trained with (checked per step).
        self.spec = StateSpec(tuple(self.domains), trained_spec.num_probes,
                              progress_scale=trained_spec.progress_scale)
        self.actor, self.metadata = load_actor(config.actor, self.domains, self.spec, device=config.device)
        self.builder = StateBuilder(self.spec)
        self.warmup_steps = (
            default_warmup_steps(total_steps) if config.warmup_steps is None else config.warmup_steps
        )
        self.behaviour = _WarmupBehaviour(self.num_domains, config.warmup_alpha)
        self._weights = resolve_initial_weights(config.initial_weights, self.domains, self.floor)

    def _observe(self, stats: StepStats) -> dict[str, float]:
        import torch

        present = self._present(stats)
        tokens = np.asarray(stats.token_count, dtype=np.float64)
        self._skipped_total += int(np.sum((tokens > 0) & ~np.isfinite(stats.loss_mean)))
        state = self.builder.build(stats.step, stats.total_steps, stats.loss_mean, stats.sample_count,
                                   stats.probe_norms)  # fmt: skip
        behaviour_weights, skipped = self.behaviour.next_weights(stats, present)
        self._skipped_total += skipped
        if stats.step < self.warmup_steps:
            self._set_weights(behaviour_weights)
            return {"mixer/warmup": 1.0}
        with torch.no_grad():
            s = torch.as_tensor(state, dtype=torch.float32, device=next(self.actor.parameters()).device)
            probs = self.actor(s.unsqueeze(0))[0].double().cpu().numpy()
        self._set_weights(probs)
        return {"mixer/warmup": 0.0}

    def _state_dict(self) -> dict:
        # The actor is frozen and lives in its export directory; only the run-dependent memory is saved.
        return {"builder": self.builder.state_dict(), "behaviour": self.behaviour.sampler.state_dict(),
                "warmup_steps": self.warmup_steps, "actor_path": str(self.config.actor)}  # fmt: skip

    def _load_state_dict(self, sd: dict) -> None:
        self.builder.load_state_dict(sd["builder"])
        self.behaviour.sampler.load_state_dict(sd["behaviour"])
        self.warmup_steps = int(sd["warmup_steps"])
