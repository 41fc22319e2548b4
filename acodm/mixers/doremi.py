"""DoReMi (Xie et al., arXiv 2305.10429): Group-DRO exponentiated gradient on per-domain excess loss.

λ_i = (Σ_{tokens of i} max(ℓ_θ − ℓ_ref, 0)) / tokens_i, against a frozen reference model;
α' = α ⊙ exp(η λ);  α = (1 − c)·α'/Σα' + c/K  (η = 1, c = 1e-3 in the paper).
Domains absent from a step get λ_i = 0 (no evidence), as in the DoReMi implementation.
The published output is the time average of α (``average_weights()``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from acodm.mixers.base import Mixer, MixerNeeds, StepStats, resolve_initial_weights


@dataclass
class DoReMiConfig:
    lr: float = 1.0  # η: step size of the exponentiated-gradient update
    smoothing: float = 1e-3  # c: mixing with the uniform distribution, α = (1−c)·α'/Σα' + c/K
    floor: float = 0.0  # extra min weight on top of the smoothing (c/K already bounds weights below)
    initial_weights: dict[str, float] | None = None  # domain -> weight; None = uniform

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"mixing.lr must be > 0, got {self.lr}")
        if not 0.0 <= self.smoothing <= 1.0:
            raise ValueError(f"mixing.smoothing must be in [0, 1], got {self.smoothing}")


class DoReMiMixer(Mixer):
    method = "doremi"
    needs = MixerNeeds(reference_losses=True)

    def __init__(self, domains: list[str], total_steps: int, seed: int, config: DoReMiConfig):
        super().__init__(domains, config.floor, total_steps, seed)
        self.config = config
        self._weights = resolve_initial_weights(config.initial_weights, self.domains, self.floor)
        self._log_alpha = np.log(np.maximum(self._weights, 1e-300))  # α kept in log space: exp(η λ) never overflows there

    def _observe(self, stats: StepStats) -> dict[str, float]:
        cfg = self.config
        k = self.num_domains
        if stats.excess_loss_sum is None:
            self._skipped_total += 1
            return {}
        tokens = np.asarray(stats.token_count, dtype=np.float64)
        excess_sum = np.asarray(stats.excess_loss_sum, dtype=np.float64)
        present = tokens > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            excess = np.where(present, excess_sum / np.where(present, tokens, 1.0), 0.0)  # λ, (K,)
        bad = present & ~np.isfinite(excess)
        self._skipped_total += int(bad.sum())
        excess = np.where(bad, 0.0, np.maximum(excess, 0.0))  # max(·, 0) is already in the sum; guard rounding
        log_alpha_prime = self._log_alpha + cfg.lr * excess
        if not np.all(np.isfinite(log_alpha_prime)):
            self._skipped_total += 1
            return {}
        alpha_prime = np.exp(log_alpha_prime - log_alpha_prime.max())
        alpha = (1 - cfg.smoothing) * alpha_prime / alpha_prime.sum() + cfg.smoothing / k
        self._set_weights(alpha)
        self._log_alpha = np.log(np.maximum(self._weights, 1e-300))  # c = floor = 0 may underflow to 0
        return {"mixer/reward": float(np.mean(excess[present])) if present.any() else 0.0}

    def _state_dict(self) -> dict:
        return {"log_alpha": self._log_alpha.copy()}

    def _load_state_dict(self, sd: dict) -> None:
        self._log_alpha = np.asarray(sd["log_alpha"], dtype=np.float64).copy()
