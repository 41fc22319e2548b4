"""ODM (Albalak et al., arXiv 2312.02406): online data mixing as a multi-armed bandit.

Two variants (formulas in shared/reference/methods.md):

- ``exp3`` (the paper): ε_t = min(1/K, sqrt(ln K / (K t))),
  π_t(i) = (1 − K ε_t) · softmax(ε_{t−1} R̂)_i + ε_t, and for every domain sampled at step t
  R̂_i ← α R̂_i + (1 − α) · L_i / π_t(i)  (importance-weighted by the probability in force at step t).
  With per-sample mixing every domain present in the step counts as "sampled".
- ``smoothed_mean`` (the released code): for present domains R̂_i ← α R̂_i + (1 − α) · exp(L̄_i);
  w = (1 − K ε_t) · R̂ / Σ R̂ + ε_t (linear normalisation, no importance weighting).

Indexing: ``observe(stats)`` with ``stats.step = t`` updates R̂ with step t's losses and then sets the
policy for step t + 1, i.e. π_{t+1} = (1 − K ε_{t+1}) softmax(ε_t R̂) + ε_{t+1}. The first step uses the
initial weights (uniform unless given). During ``warmup_steps`` the weights stay at the initial weights
while R̂ is still updated (ODM's warm-up samples the natural weights).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from acodm.mixers.base import Mixer, MixerNeeds, StepStats, resolve_initial_weights, stable_softmax

ODM_VARIANTS = ("exp3", "smoothed_mean")


def exp3_epsilon(step: int, num_domains: int) -> float:
    """ε_t = min(1/K, sqrt(ln K / (K t))); t >= 1 (ε_0 := 1/K, the all-exploration start)."""
    if step < 1 or num_domains < 2:
        return 1.0 / num_domains
    return min(1.0 / num_domains, math.sqrt(math.log(num_domains) / (num_domains * step)))


@dataclass
class ODMConfig:
    variant: str = "exp3"  # "exp3" (paper) | "smoothed_mean" (released code)
    alpha: float = 0.9  # reward smoothing R̂ ← α R̂ + (1−α)·new (0.5 in ODM's 1B scripts)
    warmup_steps: int = 0  # steps that keep the initial weights (ODM used 2,000 on the natural weights)
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


class SmoothedMeanSampler:
    """The released-code ODM sampler as a reusable piece (AC-ODM's warm-up behaviour policy too).

    R̂ starts unset per domain; a domain's first observation sets R̂_i = exp(L̄_i) (instead of smoothing
    towards 0, which would rank unseen domains last); domains never seen take the mean of the seen R̂ in
    the normalisation, so they are neither starved nor favoured before their first loss arrives.
    """

    def __init__(self, num_domains: int, alpha: float, max_loss: float = 50.0):
        self.num_domains = num_domains
        self.alpha = alpha
        self.max_loss = max_loss
        self.reward = np.zeros(num_domains)  # R̂
        self.seen = np.zeros(num_domains, dtype=bool)

    def update(self, loss_mean: np.ndarray, present: np.ndarray) -> int:
        """Update R̂ for present domains; returns how many present domains were skipped (non-finite)."""
        skipped = 0
        for i in np.flatnonzero(present):
            new = math.exp(min(float(loss_mean[i]), self.max_loss))
            value = self.alpha * self.reward[i] + (1 - self.alpha) * new if self.seen[i] else new
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
        self._smoothed = SmoothedMeanSampler(self.num_domains, config.alpha, config.max_loss)

    def _observe(self, stats: StepStats) -> dict[str, float]:
        k = self.num_domains
        loss_mean = stats.loss_mean
        tokens = np.asarray(stats.token_count, dtype=np.float64)
        present = self._present(stats)
        # A domain with tokens but a non-finite loss is a bad statistic: skipped and counted.
        self._skipped_total += int(np.sum((tokens > 0) & ~np.isfinite(loss_mean)))
        if self.config.variant == "exp3":
            in_force = self._weights  # π_t(i): the probabilities step t was sampled with
            alpha = self.config.alpha
            for i in np.flatnonzero(present):
                value = alpha * self._exp3_reward[i] + (1 - alpha) * loss_mean[i] / in_force[i]
                if not math.isfinite(value):
                    self._skipped_total += 1
                    continue
                self._exp3_reward[i] = value
        else:
            self._skipped_total += self._smoothed.update(loss_mean, present)

        next_step = stats.step + 1
        eps_next = exp3_epsilon(next_step, k)
        if next_step <= self.config.warmup_steps:
            self._weights = self._initial.copy()
        elif self.config.variant == "exp3":
            eps_prev = exp3_epsilon(stats.step, k)
            self._set_weights((1 - k * eps_next) * stable_softmax(eps_prev * self._exp3_reward) + eps_next)
        else:
            self._set_weights(self._smoothed.distribution(eps_next))
        reward = self._exp3_reward if self.config.variant == "exp3" else self._smoothed.reward
        return {"mixer/exploration": eps_next, "mixer/reward": float(np.mean(reward))}

    def _state_dict(self) -> dict:
        return {"exp3_reward": self._exp3_reward.copy(), "smoothed": self._smoothed.state_dict()}

    def _load_state_dict(self, sd: dict) -> None:
        self._exp3_reward = np.asarray(sd["exp3_reward"], dtype=np.float64).copy()
        self._smoothed.load_state_dict(sd["smoothed"])
