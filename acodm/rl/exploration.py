"""Exploration on the simplex, general in K.

The released code subtracts U[0,1)/1000 per domain from the action (hard-coded for K = 22; weights can
go negative). Here: Gaussian noise in logit space,

    a = softmax(log μ(s) + σ_t ξ),  ξ ~ N(0, I_K),

which stays on the simplex for any K and is multiplicative (a domain at 1% moves to ~1%·e^{±σ}, not by
an absolute amount that would swamp small domains). σ_t decays linearly from ``sigma_start`` to
``sigma_end`` over the run (exploration matters early, the policy should be followed late). The
caller then mixes the result with the floor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LogitGaussianNoise:
    sigma_start: float = 0.5
    sigma_end: float = 0.05

    def __post_init__(self) -> None:
        if self.sigma_start < 0 or self.sigma_end < 0:
            raise ValueError(
                f"mixing.exploration_sigma_start/end must be >= 0, got {self.sigma_start}, {self.sigma_end}"
            )

    def sigma(self, step: int, total_steps: int) -> float:
        frac = min(max(step / max(total_steps, 1), 0.0), 1.0)
        return self.sigma_start + (self.sigma_end - self.sigma_start) * frac

    def perturb(self, probs: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
        probs = np.asarray(probs, dtype=np.float64)
        logits = np.log(np.maximum(probs, 1e-12))  # 1e-12: a softmax output can underflow to 0
        noisy = logits + sigma * rng.standard_normal(probs.shape[0])
        z = np.exp(noisy - noisy.max())
        return z / z.sum()
