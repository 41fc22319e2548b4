"""DoGE (Fan et al., arXiv 2310.15393): online mirror descent on per-domain gradient alignment.

W_i = ⟨g_i, Σ_j g_j⟩ (train domains = target domains), read off the Gram matrix G_ij = ⟨g_i, g_j⟩
that the trainer collects (acodm/alignment.py). The update is the closed form of
argmin_α η⟨−W, α⟩ + μ·KL(α ‖ α_t):  log α ← log α + η·W/μ, then softmax.

η is the *model's* learning rate: DoGE's weight update is the first-order effect of the model's own
SGD step η Σ_i α_i g_i on every domain's loss, so the natural default is the LM learning rate (1e-3 for
the small Pythia configs). μ = 0.01 and the clipping of the scores η·W to [0, 5η] follow the released
config. The reported output of DoGE is the time average of α (``average_weights()``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from acodm.mixers.base import Mixer, MixerNeeds, StepStats, resolve_initial_weights, stable_softmax


@dataclass
class DoGEConfig:
    lr: float = 1e-3  # η: the LM learning rate (see module docstring)
    mu: float = 0.01  # μ: strength of the KL (Bregman) proximity term; smaller = bigger steps
    exclude_self: bool = False  # W_i = Σ_{j≠i} G_ij instead of Σ_j G_ij
    normalize_by_mean_norm: bool = False  # divide W by mean_k ||g_k|| over present domains
    clip_scores: bool = True  # clip η·W to [0, 5η] as in the released config
    floor: float = 1e-3  # min weight of every domain
    initial_weights: dict[str, float] | None = None  # domain -> weight; None = uniform

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"mixing.lr must be > 0, got {self.lr}")
        if not self.mu > 0:
            raise ValueError(f"mixing.mu must be > 0, got {self.mu}")


def doge_scores(gram: np.ndarray, present: np.ndarray, exclude_self: bool, normalize_by_mean_norm: bool) -> np.ndarray:
    """(K,) W_i = ⟨g_i, Σ_j g_j⟩ over present domains (absent domains score 0)."""
    g = np.where(np.outer(present, present), gram, 0.0)  # (K, K)
    w = g.sum(axis=1)
    if exclude_self:
        w = w - np.diag(g)
    if normalize_by_mean_norm:
        mean_norm = float(np.mean(np.sqrt(np.maximum(np.diag(g)[present], 0.0)))) if present.any() else 0.0
        w = w / mean_norm if mean_norm > 0 else np.zeros_like(w)
    return w


class DoGEMixer(Mixer):
    method = "doge"
    needs = MixerNeeds(alignment=True)

    def __init__(self, domains: list[str], total_steps: int, seed: int, config: DoGEConfig):
        super().__init__(domains, config.floor, total_steps, seed)
        self.config = config
        self._weights = resolve_initial_weights(config.initial_weights, self.domains, self.floor)
        self._log_weights = np.log(np.maximum(self._weights, 1e-300))

    def _observe(self, stats: StepStats) -> dict[str, float]:
        cfg = self.config
        tokens = np.asarray(stats.token_count, dtype=np.float64)
        present = tokens > 0
        if stats.gram is None:
            self._skipped_total += 1
            return {}
        gram = np.asarray(stats.gram, dtype=np.float64)
        sub = gram[np.ix_(present, present)]
        if not present.any() or not np.all(np.isfinite(sub)):
            self._skipped_total += 1  # one bad Gram entry poisons every W_i: skip the whole step
            return {}
        with np.errstate(over="ignore", invalid="ignore"):
            w = doge_scores(gram, present, cfg.exclude_self, cfg.normalize_by_mean_norm)
            scores = cfg.lr * w
            if cfg.clip_scores:
                scores = np.clip(scores, 0.0, 5.0 * cfg.lr)
            candidate = self._log_weights + scores / cfg.mu
        if not np.all(np.isfinite(candidate)):
            self._skipped_total += 1
            return {}
        # Absent domains have no gradient this step: their score is 0 (they keep their log weight and
        # lose mass only through the renormalisation), as in DoGE with a domain missing from a batch.
        p = stable_softmax(candidate)
        self._set_weights(p)
        # Keep log weights of the floored distribution so the next step starts from what was used.
        self._log_weights = np.log(np.maximum(self._weights, 1e-300))
        return {"mixer/reward": float(np.mean(w))}

    def _state_dict(self) -> dict:
        return {"log_weights": self._log_weights.copy()}

    def _load_state_dict(self, sd: dict) -> None:
        self._log_weights = np.asarray(sd["log_weights"], dtype=np.float64).copy()
