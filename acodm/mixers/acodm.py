"""AC-ODM (arXiv 2505.23878): an actor that maps training statistics to domain weights, trained online.

Per optimizer step t (``observe(stats_t)``):

    a_t          what step t's batch held: the realised share of each domain's sequences (``action=
                 realised``; every domain is forced ``min_samples`` times, so nominal 0.98 can be 17/32),
                 or the weights in force during step t (``nominal``)
    r_t          reward of a_t, from step t's gradient Gram matrix (the gradients were taken on that batch)
    s_t          state built from step t's statistics (acodm/state.py); it exists before a_{t+1} is chosen
    transition   (s_{t−1}, a_t, r_t, s_t) goes to the replay buffer (none at t = 1: no s_0 exists)
    a_{t+1}      warm-up: ODM smoothed-mean behaviour (α = 0.5) from the losses;
                 afterwards: floor(actor(s_t)) after one actor update (exploration noise with a critic only)

At the end of the warm-up (t = warmup_steps) the actor is behaviour-cloned to the stored behaviour
actions (MSE), the critic regressed to (1 + γ)·r, and the targets copied from the online networks.

Rewards (``reward``):
- "linear" (default): r(a) = Σ_k a_k t̂_k, t̂_k = ⟨g_k, g_T⟩ / mean_j ‖g_j‖² over present domains, g_T the
  gradient of the mean target loss (``mixing.target_domains``; every domain by default, then t̂ is the mean
  Gram row, DoGE's W/K). Σ_k a_k t̂_k is the first-order decrease of the target loss along the step direction
  Σ_k a_k g_k; the normalisation keeps it scale-free as gradients shrink. With ``actor_gradient=known``
  (default) no critic is learned: the reward's gradient in a is t̂ itself, known for every replayed step,
  and the actor ascends it at a small learning rate (3e-4), so the mixture moves smoothly towards the
  domains whose gradients serve the target, and as those are trained their gradients shrink and the
  weight moves on. (A linear objective's maximiser on the simplex is a vertex: the paper's learned critic
  at lr 0.01 drove the actor there within ~10 updates; at 3e-4 over 150 steps it stayed interior. Runs
  much longer than the benchmark's were not measured.)
- "surrogate": r(a) = aᵀt̂ − (λ/2) aᵀĜa = −(1/2λ)‖λ Σ_k a_k g_k − g_T‖² + const on the cross-step Gram
  (``self_term``): concave, maximised by the mixture whose gradient best matches the target's. It lost to
  "linear" on the benchmark's *noisy* variant (README, "Mixing quality"): the noisy per-step Ĝ moved its
  optimum between single clean domains.
- "paper": per-domain s_i = Σ_{j≠i} G_ij / mean_k ‖g_k‖, r = z(s) over present domains (0 for absent),
  K critic outputs, the actor maximises their mean (a learned critic, nominal actions: the paper's
  reproduction mode). Its mean over domains is 0 by construction (docs/methods.md, defect 2).

``acodm_frozen`` drives a run with an exported actor: no critic, no reward, no alignment statistics.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from acodm.gram import alignment_scores, mean_gradient_norm
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

REWARDS = ("linear", "surrogate", "paper")
ACTOR_GRADIENTS = ("known", "critic")
ACTIONS = ("realised", "nominal")
SELF_TERMS = ("cross_step", "same_step")


def default_warmup_steps(total_steps: int) -> int:
    """The paper's 834 of 41,667 steps: 2% of the run."""
    return int(round(0.02 * total_steps))


@dataclass
class ACODMConfig:
    # "linear" (default): r(a) = aᵀt̂, t̂_i = <g_i, g_T> / mean ‖g_k‖²; "surrogate": aᵀt̂ − (λ/2) aᵀĜa on the
    # cross-step Gram; "paper": the released per-domain z-scored reward (K critic outputs). Module docstring.
    reward: str = "linear"
    # "known" (surrogate/linear): the actor ascends the reward's closed-form gradient on replayed steps;
    # "critic": DDPG, the actor ascends a learned critic (the paper's). None: critic for reward=paper,
    # known otherwise.
    actor_gradient: str | None = None
    # The action a transition records: "realised", each domain's share of the batch's sequences, what the
    # gradients were really taken on; "nominal": the weights in force. None: nominal for reward=paper
    # (the paper's reproduction), realised otherwise.
    action: str | None = None
    # reward=surrogate: the Gram's diagonal ‖g_i‖² is "cross_step" <g_i now, g_i at the previous step>, free
    # of the same-step self term's sampling-noise bias, or "same_step" (the plain Gram, biased up by noise/n_i)
    self_term: str = "cross_step"
    surrogate_lambda: float = 1.0  # reward=surrogate: λ, weight of the quadratic (second-order) term
    surrogate_replay: int = 256  # steps (G, t, state) kept for the known-gradient actor (FIFO)
    # β of the entropy bonus r += β·H(a)/ln K. The linear surrogate is linear in a, so its maximiser on the
    # simplex is a vertex: without a bonus the policy learns to put all weight on one domain (seen on the
    # demo corpus, README "Results"). With it the per-step optimum is a ∝ exp(Ŵ·ln K/β), the closed form of
    # DoGE's entropic mirror step. 0 = no bonus (the reward unchanged).
    entropy_coef: float = 0.0
    progress_scale: float = 100.0  # progress feature = step/total × this (paper: 100, a percentage)
    num_probe_layers: int = 9  # P: state probe matrices the trainer reports (paper: 9); dim = 3K + 2P + 1
    warmup_steps: int | None = None  # behaviour-policy steps; None = 2% of total_steps (paper: 834)
    warmup_alpha: float = 0.5  # smoothing of the ODM smoothed-mean behaviour policy (paper: 0.5)
    warmup_fit_epochs: int = 5  # passes over the replay buffer for the end-of-warm-up BC / critic fit
    # "end": the BC / critic fit above, once, when the warm-up ends; "per_step": one minibatch of it on every
    # warm-up step and the targets copied at the end, as the released code (DANG-ai/AC-ODM
    # megatron/data/agent.py L434-L487, training.py L1548). None: per_step for reward=paper, end otherwise.
    warmup_fit: str | None = None
    hidden_size: int = 1024  # network width (paper: 1024)
    num_hidden_layers: int = 5  # Linear+LayerNorm+ReLU blocks (paper: 1 input + 4 hidden = 5)
    gamma: float = 0.95  # discount
    tau: float = 0.001  # Polyak coefficient
    # Actor/critic peak learning rate and cosine floor. None: the paper's 0.01 / 0.001 with a learned critic;
    # 3e-4 / 3e-5 for the known-gradient actor, which at 0.01 (and 1e-3) hopped between vertices on the
    # mixing benchmark (README, "Mixing quality").
    lr_max: float | None = None
    lr_min: float | None = None
    lr_warmup_steps: int | None = None  # linear LR warm-up; None = warmup_steps (paper: 834 for both)
    weight_decay: float = 0.1  # paper: 0.1
    optimizer: str = "adamw"  # "adamw" (decoupled weight decay) | "adam" (Adam with L2 in the gradient)
    replay_capacity: int = 10_000  # FIFO
    # Replayed steps per update (one update per observe; DDPG waits until the buffer has this many). None:
    # 32 with a critic (the paper's), 64 for the known-gradient actor (a smoother average of the Grams).
    batch_size: int | None = None
    exploration_sigma_start: float = 0.5  # logit-space Gaussian noise scale at step 0 (see rl/exploration.py)
    exploration_sigma_end: float = 0.05  # ... decayed linearly to this at total_steps
    floor: float = 1e-3  # min weight of every domain
    initial_weights: dict[str, float] | None = None  # weights of step 1; None = uniform
    device: str = "cpu"  # where the networks live ("cuda" on the trainer's rank 0 at paper size)

    def __post_init__(self) -> None:
        if self.reward not in REWARDS:
            raise ValueError(f"mixing.reward must be one of {REWARDS}, got {self.reward!r}")
        paper = self.reward == "paper"
        if self.actor_gradient is None:
            self.actor_gradient = "critic" if paper else "known"
        if self.action is None:
            self.action = "nominal" if paper else "realised"
        if self.warmup_fit is None:
            self.warmup_fit = "per_step" if paper else "end"
        if self.warmup_fit not in ("end", "per_step"):
            raise ValueError(f"mixing.warmup_fit must be 'end' or 'per_step', got {self.warmup_fit!r}")
        known = self.actor_gradient == "known"
        if self.lr_max is None:
            self.lr_max = 3e-4 if known else 0.01
        if self.lr_min is None:
            self.lr_min = 3e-5 if known else 0.001
        if self.batch_size is None:
            self.batch_size = 64 if known else 32
        for name, value, allowed in (("actor_gradient", self.actor_gradient, ACTOR_GRADIENTS),
                                     ("action", self.action, ACTIONS), ("self_term", self.self_term, SELF_TERMS)):
            if value not in allowed:
                raise ValueError(f"mixing.{name} must be one of {allowed}, got {value!r}")
        if self.actor_gradient == "known" and self.reward == "paper":
            raise ValueError("mixing.actor_gradient=known needs reward surrogate or linear (the paper's "
                             "per-domain z-scores have no action gradient); use actor_gradient=critic")
        if not (self.surrogate_lambda >= 0 and np.isfinite(self.surrogate_lambda)):
            raise ValueError(f"mixing.surrogate_lambda must be a finite number >= 0, got {self.surrogate_lambda}")
        if self.surrogate_replay < 1:
            raise ValueError(f"mixing.surrogate_replay must be >= 1, got {self.surrogate_replay}")
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
    device: str = "cpu"  # where the frozen actor runs; "cuda" only pays off at paper size

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
            w_hat[present] = alignment_scores(sub) / scale  # W_i / mean ‖g_k‖²
            reward = np.array([float(np.asarray(action, dtype=np.float64) @ w_hat)])
        else:
            scale = mean_gradient_norm(sub)
            if not (np.isfinite(scale) and scale > 0):
                return None
            s = alignment_scores(sub, exclude_self=True) / scale  # s_i = Σ_{j≠i} G_ij / mean ‖g_k‖
            reward = np.zeros(k)
            reward[present] = zscore(s)
    # The replay buffer stores float32: a reward that is finite only in float64 would become inf there.
    ok = np.all(np.isfinite(reward)) and np.all(np.abs(reward) < 1e30)
    return reward if ok else None


def surrogate_terms(stats: StepStats, self_term: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(Ĝ, t̂): the step's Gram over training domains and each domain's alignment with the target direction,
    both divided by the mean ‖g_k‖² of the present domains (scale-free as gradients shrink); None if the
    statistics cannot give them (missing, non-finite, no cross-step diagonal yet).

    With ``self_term="cross_step"`` the diagonal ‖g_i‖² is ⟨g_i now, g_i one step earlier⟩ (clamped at 0)
    and the target alignment's self terms are replaced likewise: a domain whose gradient is pure noise (an
    unlearnable domain) then scores ≈ 0 instead of its noise variance / n_i.
    """
    if stats.gram is None:
        return None
    gram = np.asarray(stats.gram, dtype=np.float64)
    present = np.asarray(stats.token_count) > 0
    k = gram.shape[0]
    if stats.target_alignment is None:  # every domain a target: g_T is the mean gradient, <g_i, g_T> = W_i / K
        mask, target = np.full(k, 1.0 / k), alignment_scores(gram) / k
    else:  # mask_i = 1/|T| for the training domains among the targets
        target = np.asarray(stats.target_alignment, dtype=np.float64)
        count = stats.num_targets or 1
        mask = (np.ones(k) if stats.target_mask is None else np.asarray(stats.target_mask, np.float64)) / count
    if self_term == "cross_step":
        if stats.gram_cross is None:
            return None
        diag = np.maximum(np.diag(np.asarray(stats.gram_cross, dtype=np.float64)), 0.0)
        target = target + mask * (diag - np.diag(gram))
        gram = gram - np.diag(np.diag(gram)) + np.diag(diag)
    gram = np.where(np.outer(present, present), gram, 0.0)
    target = np.where(present, target, 0.0)
    if not (present.any() and np.all(np.isfinite(gram)) and np.all(np.isfinite(target))):
        return None
    scale = float(np.diag(gram)[present].mean())
    if not (np.isfinite(scale) and scale > 0):
        return None
    g_hat, t_hat = gram / scale, target / scale
    ok = np.all(np.abs(g_hat) < 1e30) and np.all(np.abs(t_hat) < 1e30)  # float32 in the buffer
    return (g_hat, t_hat) if ok else None


def surrogate_reward(action: np.ndarray, g_hat: np.ndarray, t_hat: np.ndarray, lam: float) -> float:
    """r(a) = aᵀt̂ − (λ/2) aᵀĜa = −(1/2λ)‖λ Σ_k a_k g_k − g_T‖² + const (in units of the mean ‖g_k‖²):
    the first-order decrease of the target loss along the step Σ a_k g_k less a second-order penalty, so the
    reward is concave and its maximiser an interior mixture. With λ = 1 it is the mixture whose gradient
    best matches the target's: the targets' own uniform mixture when they are training domains (uniform
    when every domain is a target), the best-aligned blend of the others when they are not."""
    a = np.asarray(action, dtype=np.float64)
    return float(a @ t_hat - 0.5 * lam * a @ g_hat @ a)


class SurrogateReplay:
    """FIFO of (state the action was chosen from, Ĝ, t̂) for the known-gradient actor."""

    def __init__(self, capacity: int, state_dim: int, num_domains: int):
        self.capacity = capacity
        self.states = np.zeros((capacity, state_dim), dtype=np.float32)
        self.grams = np.zeros((capacity, num_domains, num_domains), dtype=np.float32)
        self.targets = np.zeros((capacity, num_domains), dtype=np.float32)
        self.size = 0
        self.next = 0

    def __len__(self) -> int:
        return self.size

    def add(self, state: np.ndarray, g_hat: np.ndarray, t_hat: np.ndarray) -> None:
        i = self.next
        self.states[i], self.grams[i], self.targets[i] = state, g_hat, t_hat
        self.next = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, rng: np.random.Generator):
        idx = rng.integers(0, self.size, size=min(batch_size, self.size))
        return self.states[idx], self.grams[idx], self.targets[idx]

    def state_dict(self) -> dict:
        n = self.size
        order = (np.arange(n) + (self.next - n)) % self.capacity  # oldest first
        return {"states": self.states[order].copy(), "grams": self.grams[order].copy(),
                "targets": self.targets[order].copy()}

    def load_state_dict(self, sd: dict) -> None:
        self.size = self.next = 0
        for s_, g, t in zip(np.asarray(sd["states"]), np.asarray(sd["grams"]), np.asarray(sd["targets"])):
            self.add(s_, g, t)


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
        reward_dim = self.num_domains if config.reward == "paper" else 1
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
        self.surrogate = (SurrogateReplay(config.surrogate_replay, self.spec.dim, self.num_domains)
                          if config.actor_gradient == "known" else None)
        self._lambda = config.surrogate_lambda if config.reward == "surrogate" else 0.0  # linear: λ = 0
        self.noise = LogitGaussianNoise(config.exploration_sigma_start, config.exploration_sigma_end)
        self.rng = np.random.default_rng(seed)  # exploration noise and replay sampling
        self.behaviour = _WarmupBehaviour(self.num_domains, config.warmup_alpha)
        self._weights = resolve_initial_weights(config.initial_weights, self.domains, self.floor)
        self._prev_state: np.ndarray | None = None  # s_{t−1}, the state a_t was chosen from
        self._warmup_fitted = self.warmup_steps == 0
        self._last_step = 0

    def _observe(self, stats: StepStats) -> dict[str, float]:
        t = stats.step
        cfg = self.config
        # a_t: what step t's batch held (realised shares) or the weights in force during step t
        nominal = self._weights if stats.weights is None else np.asarray(stats.weights, dtype=np.float64)
        action = stats.realised_shares if cfg.action == "realised" else nominal
        present = self._present(stats)
        tokens = np.asarray(stats.token_count, dtype=np.float64)
        self._skipped_total += int(np.sum((tokens > 0) & ~np.isfinite(stats.loss_mean)))
        metrics: dict[str, float] = {}

        terms = None
        if cfg.reward == "surrogate" or self.surrogate is not None:
            terms = surrogate_terms(stats, cfg.self_term if cfg.reward == "surrogate" else "same_step")
        if cfg.reward == "surrogate" or self.surrogate is not None:  # what the known-gradient actor ascends
            reward = None if terms is None else np.array([surrogate_reward(action, *terms, self._lambda)])
        else:  # a learned critic on the reward as first shipped (linear: Σ_j G_kj, every domain a target)
            reward = alignment_reward(stats.gram, np.asarray(stats.token_count) > 0, action, cfg.reward)
        if reward is not None and self.config.entropy_coef > 0:
            reward = reward + self.config.entropy_coef * normalized_entropy(action)
        if reward is None:
            self._skipped_total += 1  # no transition this step (missing / non-finite Gram)
        else:
            metrics["mixer/reward"] = float(reward.mean())
        state = self.builder.build(t, stats.total_steps, stats.loss_mean, stats.sample_count, stats.probe_norms)
        if self._prev_state is not None and reward is not None:
            self.replay.add(self._prev_state, action, reward, state)
        if self.surrogate is not None and self._prev_state is not None and terms is not None:
            self.surrogate.add(self._prev_state, *terms)
        self._prev_state = state

        behaviour_weights, skipped = self.behaviour.next_weights(stats, present)
        self._skipped_total += skipped
        if t < self.warmup_steps:
            self._set_weights(behaviour_weights)
            metrics["mixer/warmup"] = 1.0
            if cfg.warmup_fit == "per_step" and len(self.replay) > 0:
                idx = self.rng.integers(0, len(self.replay), size=min(cfg.batch_size, len(self.replay)))
                s, a, r, _ = self.replay.get(idx)
                metrics.update(self.ddpg.fit_warmup(s, a, r, 1, cfg.batch_size, self.rng, t, copy_targets=False))
        else:
            if not self._warmup_fitted and cfg.warmup_fit == "per_step":
                self.ddpg.copy_targets()
                self._warmup_fitted = True
            if not self._warmup_fitted:
                if len(self.replay) > 0:
                    s, a, r, _ = self.replay.get(self.replay.ordered_indices())
                    metrics.update(
                        self.ddpg.fit_warmup(s, a, r, self.config.warmup_fit_epochs, self.config.batch_size,
                                             self.rng, t)  # fmt: skip
                    )
                self._warmup_fitted = True
            elif self.surrogate is not None:
                if len(self.surrogate) > 0:
                    metrics.update(self.ddpg.update_on_surrogate(*self.surrogate.sample(cfg.batch_size, self.rng),
                                                                 lam=self._lambda, step=t))
                    self._skipped_total += int(metrics["mixer/ddpg_skipped"])
            elif len(self.replay) >= cfg.batch_size:
                metrics.update(self.ddpg.update(*self.replay.sample(cfg.batch_size, self.rng), step=t))
                self._skipped_total += int(metrics["mixer/ddpg_skipped"])
            # The known-gradient actor needs no exploration: the surrogate's gradient is known at every action.
            sigma = 0.0 if self.surrogate is not None else self.noise.sigma(t, self.total_steps)
            policy = self.ddpg.act(state)
            if not np.all(np.isfinite(policy)):
                self._skipped_total += 1  # apply_floor falls back to uniform; reported, never propagated
            self._set_weights(self.noise.perturb(policy, sigma, self.rng) if sigma > 0 else policy)
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
            "surrogate": None if self.surrogate is None else self.surrogate.state_dict(),
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
        if self.surrogate is not None and sd.get("surrogate") is not None:
            self.surrogate.load_state_dict(sd["surrogate"])
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
        from acodm.actor_export import load_actor, read_actor_metadata

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
