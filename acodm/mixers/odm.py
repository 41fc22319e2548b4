"""ODM (Albalak et al., arXiv 2312.02406): online data mixing as a multi-armed bandit.

Two variants (formulas in docs/methods.md, "ODM"):

- ``exp3`` (the paper): ε_t = min(1/K, sqrt(ln K / (K t))),
  π = (1 − K ε) · softmax(ε_prev R̂) + ε, and for every domain sampled in the step
  R̂_i ← α R̂_i + (1 − α) · L_i / π(i)  (importance-weighted by the probability the step was drawn with).
  With per-sample mixing every domain present in the step counts as "sampled".
- ``smoothed_mean`` (the released code, alon-albalak/online-data-mixing at edbfdad,
  ``SmoothedMeanWeightUpdater.group_update``, ``megatron/data/data_sampling_utils.py`` L501-L528): for
  present domains R̂_i ← α R̂_i + (1 − α) · exp(L̄_i) with R̂ starting at 0 (L466);
  w = (1 − K ε) · R̂ / Σ R̂ + ε (L515-L526: the ε_prev factors cancel in this linear normalisation).

Indexing and warm-up, as in the released training loop (``megatron/training.py``): the step counter is
incremented (L1242) *before* the update ``group_update(iteration)`` (L1267), and the updater computes
ε = ε(iteration) (L504, L424). So ``observe(stats)`` with ``stats.step = t`` sets the weights for step
t + 1 with ε_t (``epsilon_offset = 0``); ``epsilon_offset = 1`` is this project's earlier reading, ε_{t+1}
(the step the weights will be used for). EXP3's ε_prev is the ε of the previous update (1/K before
any, L370-L371, L423). Updates happen only when t > ``warmup_steps`` (``UpdateScheduler.requires_update``,
L319-L320): during warm-up neither R̂ nor the weights change, so steps 1 … warmup_steps + 1 use the
initial weights (ODM warmed up 2,000 steps on the natural weights). ``update_during_warmup=True`` keeps
this project's earlier form (R̂ accumulates during warm-up while the weights are held).

The released code's own EXP3 (``Exp3WeightUpdater.group_update``, L421-L453) differs from the paper's,
which the ``exp3`` variant follows: it accumulates R̂_i += (L_i / 10) / π(i) without smoothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from acodm.mixers.base import Mixer, MixerNeeds, StepStats, resolve_initial_weights, stable_softmax

ODM_VARIANTS = ("exp3", "smoothed_mean")
SMOOTHED_INIT = ("zero", "first_observation")


def exp3_epsilon(step: int, num_domains: int) -> float:
    """ε_t = min(1/K, sqrt(ln K / (K t))); t >= 1 (ε_0 := 1/K, the all-exploration start)."""
    if step < 1 or num_domains < 2:
        return 1.0 / num_domains
    return min(1.0 / num_domains, math.sqrt(math.log(num_domains) / (num_domains * step)))


@dataclass
class ODMConfig:
    variant: str = "exp3"  # "exp3" (paper) | "smoothed_mean" (released code)
    alpha: float = 0.9  # reward smoothing R̂ ← α R̂ + (1−α)·new (0.5 in ODM's 1B scripts)
    warmup_steps: int = 0  # steps without updates, on the initial weights (ODM used 2,000 on the natural ones)
    update_during_warmup: bool = False  # True: R̂ accumulates during warm-up (reference: no updates)
    epsilon_offset: int = 0  # weights after step t use ε_{t + offset}: 0 = released code, 1 = ε of step t+1
    # smoothed_mean: R̂ of a domain before its first loss. "zero" as the released code (its weight is then
    # ε until it is sampled); "first_observation": the first loss sets R̂_i = exp(L̄_i) and unseen domains
    # take the mean of the seen R̂ (AC-ODM's warm-up sampler uses that form).
    smoothed_init: str = "zero"
    floor: float = 1e-3  # min weight of every domain, applied on top of ε_t
    initial_weights: dict[str, float] | None = None  # domain -> weight; None = uniform
    # Losses above this are clipped before exp() in smoothed_mean (exp(50) ≈ 5e21 keeps float64 finite;
    # token cross-entropies are ≤ ln(vocab) ≈ 11 in practice).
    max_loss: float = 50.0

    def __post_init__(self) -> None:
        if self.variant not in ODM_VARIANTS:
            raise ValueError(f"mixing.variant must be one of {ODM_VARIANTS}, got {self.variant!r}")
        if not 0.0 <= self.alpha < 1.0:
            raise ValueError(f"mixing.alpha must be in [0, 1), got {self.alpha}")
        if self.warmup_steps < 0:
            raise ValueError(f"mixing.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.epsilon_offset not in (0, 1):
            raise ValueError(f"mixing.epsilon_offset must be 0 (released code) or 1, got {self.epsilon_offset}")
        if self.smoothed_init not in SMOOTHED_INIT:
            raise ValueError(f"mixing.smoothed_init must be one of {SMOOTHED_INIT}, got {self.smoothed_init!r}")


class SmoothedMeanSampler:
    """The released-code ODM sampler as a reusable piece (AC-ODM's warm-up behaviour policy too).

    ``init="zero"`` (the released code, ``data_sampling_utils.py`` L466, L511): R̂ starts at 0 and every
    observation smooths towards exp(L̄_i), so a domain not yet sampled gets weight ε only.
    ``init="first_observation"``: a domain's first observation sets R̂_i = exp(L̄_i) (instead of smoothing
    towards 0, which ranks unseen domains last); domains never seen take the mean of the seen R̂ in the
    normalisation, so they are neither starved nor favoured before their first loss arrives.
    """

    def __init__(self, num_domains: int, alpha: float, max_loss: float = 50.0, init: str = "first_observation"):
        if init not in SMOOTHED_INIT:
            raise ValueError(f"smoothed-mean init must be one of {SMOOTHED_INIT}, got {init!r}")
        self.num_domains = num_domains
        self.alpha = alpha
        self.max_loss = max_loss
        self.init = init
        self.reward = np.zeros(num_domains)  # R̂
        self.seen = np.zeros(num_domains, dtype=bool)

    def update(self, loss_mean: np.ndarray, present: np.ndarray) -> int:
        """Update R̂ for present domains; returns how many present domains were skipped (non-finite)."""
        skipped = 0
        for i in np.flatnonzero(present):
            new = math.exp(min(float(loss_mean[i]), self.max_loss))
            smooth = self.seen[i] or self.init == "zero"
            value = self.alpha * self.reward[i] + (1 - self.alpha) * new if smooth else new
            if not math.isfinite(value):
                skipped += 1
                continue
            self.reward[i] = value
            self.seen[i] = True
        return skipped

    def distribution(self, epsilon: float) -> np.ndarray:
        """(1 − K ε) · R̂ / Σ R̂ + ε (uniform before any observation)."""
        k = self.num_domains
        if not self.seen.any():
            return np.full(k, 1.0 / k)
        if self.init == "zero":
            r = self.reward
        else:
            r = np.where(self.seen, self.reward, self.reward[self.seen].mean())
        total = r.sum()
        if not (math.isfinite(total) and total > 0):  # every R̂ underflowed to 0 (losses << 0)
            return np.full(k, 1.0 / k)
        return (1 - k * epsilon) * r / total + epsilon

    def state_dict(self) -> dict:
        return {"reward": self.reward.copy(), "seen": self.seen.copy()}

    def load_state_dict(self, sd: dict) -> None:
        self.reward = np.asarray(sd["reward"], dtype=np.float64).copy()
        self.seen = np.asarray(sd["seen"], dtype=bool).copy()


class ODMMixer(Mixer):
    method = "odm"
    needs = MixerNeeds()

    def __init__(self, domains: list[str], total_steps: int, seed: int, config: ODMConfig):
        super().__init__(domains, config.floor, total_steps, seed)
        self.config = config
        self._initial = resolve_initial_weights(config.initial_weights, self.domains, self.floor)
        self._weights = self._initial.copy()
        self._exp3_reward = np.zeros(self.num_domains)  # R̂ of the EXP3 variant (starts at 0: uniform)
        self._smoothed = SmoothedMeanSampler(self.num_domains, config.alpha, config.max_loss, config.smoothed_init)
        self._last_epsilon = 1.0 / self.num_domains  # ε of the last weight update (EXP3's ε_prev); 1/K before any

    def _observe(self, stats: StepStats) -> dict[str, float]:
        cfg = self.config
        k = self.num_domains
        loss_mean = stats.loss_mean
        tokens = np.asarray(stats.token_count, dtype=np.float64)
        present = self._present(stats)
        # A domain with tokens but a non-finite loss is a bad statistic: skipped and counted.
        self._skipped_total += int(np.sum((tokens > 0) & ~np.isfinite(loss_mean)))
        in_warmup = stats.step <= cfg.warmup_steps
        if not in_warmup or cfg.update_during_warmup:
            if cfg.variant == "exp3":
                # π(i): the probabilities step t was sampled with (the plan's, when the trainer says)
                in_force = self._weights if stats.weights is None else np.asarray(stats.weights, dtype=np.float64)
                for i in np.flatnonzero(present):
                    value = cfg.alpha * self._exp3_reward[i] + (1 - cfg.alpha) * loss_mean[i] / in_force[i]
                    if not math.isfinite(value):
                        self._skipped_total += 1
                        continue
                    self._exp3_reward[i] = value
            else:
                self._skipped_total += self._smoothed.update(loss_mean, present)

        reward = self._exp3_reward if cfg.variant == "exp3" else self._smoothed.reward
        if in_warmup:
            self._weights = self._initial.copy()
            return {"mixer/exploration": self._last_epsilon, "mixer/reward": float(np.mean(reward))}
        eps = exp3_epsilon(stats.step + cfg.epsilon_offset, k)
        if cfg.variant == "exp3":
            self._set_weights((1 - k * eps) * stable_softmax(self._last_epsilon * self._exp3_reward) + eps)
        else:
            self._set_weights(self._smoothed.distribution(eps))
        self._last_epsilon = eps
        return {"mixer/exploration": eps, "mixer/reward": float(np.mean(reward))}

    def _state_dict(self) -> dict:
        return {"exp3_reward": self._exp3_reward.copy(), "smoothed": self._smoothed.state_dict(),
                "last_epsilon": self._last_epsilon}  # fmt: skip

    def _load_state_dict(self, sd: dict) -> None:
        self._exp3_reward = np.asarray(sd["exp3_reward"], dtype=np.float64).copy()
        self._smoothed.load_state_dict(sd["smoothed"])
        # States saved before ε_prev was kept: ε of the last observed step (1/K before any).
        self._last_epsilon = float(sd.get("last_epsilon", exp3_epsilon(self._num_observed, self.num_domains)))
