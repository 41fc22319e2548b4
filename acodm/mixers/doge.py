"""DoGE (Fan et al., arXiv 2310.15393): online mirror descent on per-domain gradient alignment.

W_i = ⟨g_i, Σ_j g_j⟩ (train domains = target domains), read off the Gram matrix G_ij = ⟨g_i, g_j⟩
that the trainer collects (acodm/alignment.py). The update is the closed form of
argmin_α η⟨−W, α⟩ + μ·KL(α ‖ α_t):  log α ← log α + η·W/μ, then softmax.

Defaults follow the released code, Olivia-fsm/DoGE ``src/trainer.py`` at 88400e9
(``update_domain_weights_distributed``, L719-L770, the path of the released ``config/doge.json``):

- each domain's gradient is clipped to ``max_grad_norm`` = 5.0 before the scores (L733-L734,
  ``clip_grad_norm_``: factor min(1, c / (‖g_i‖ + 1e-6))). From the Gram this is
  G_ij · f_i · f_j with f_i computed from ‖g_i‖ = sqrt(G_ii). The reference clips by the norm over all
  model parameters and its rows hold the whole model's gradient (``selected_modules`` is None outside
  the cancellation study), so the clipped vector is the one in the Gram; ours holds the probe layers only,
  so we clip by the probe-layer norm, which is <= the whole model's (our clipping is never stronger).
- W_i = Σ_j G_ij *including* the self term: the reference's ``set(train_ids) == set(tgt_ids)`` branch
  that drops the diagonal (L753-L754) compares sets of 0-d tensors, which hash by identity, so it is never
  taken and L756 always runs. ``exclude_self`` keeps the self-free form as an option.
- W is divided by mean_k ‖g_k‖ + 1e-6 over *every* train domain (L758-L759), then η·W/(…) is clipped to
  [0, 5η] (L760, ``dw_min`` 0, ``dw_max`` 5).
- η is the scheduled LM learning rate of the step, ``lr_scheduler.get_last_lr()[0]`` read before the
  optimizer and scheduler step (L750; the step is at L1861-L1866): ``StepStats.lr`` when the trainer
  gives it, else ``DoGEConfig.lr``.
- μ = 0.01 (``config/doge.json``; the argument default is 0.05).
- Absent domains keep their last gradient row (``flat_grad_mat`` is only overwritten for domains present
  in the step, L725-L737; never-seen rows are 0, L418). Only the Gram reaches this mixer, so with
  ``absent_domains="keep_last"`` we keep the last known (clipped) Gram entry of every pair: entries that
  involve an absent domain take their last measured value. The diagonal (the stale row's norm) is then
  exact; a cross term ⟨g_i^stale, g_j^now⟩ of the reference becomes ⟨g_i^stale, g_j^then⟩, measured
  the last time both domains were present together (0 if they never were). Both agree exactly while
  gradients do not change between steps. ``absent_domains="zero"`` is this project's earlier form:
  absent domains score 0 and the norm mean runs over present domains only.

Not reproduced: the reference re-weights the step's *gradient* with the new α (L769); here α is a
sampling distribution for the next steps, and the weights keep ``floor`` (the reference has none).
The reported output of DoGE is the time average of α (``average_weights()``; L767 excludes the initial
weights as the base class does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from acodm.gram import alignment_scores, mean_gradient_norm
from acodm.mixers.base import Mixer, MixerNeeds, StepStats, resolve_initial_weights, stable_softmax

DOGE_ABSENT = ("keep_last", "zero")
_NORM_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_ and DoGE's avg_norm + 1e-6


@dataclass
class DoGEConfig:
    # η when StepStats.lr is None (the reference falls back to 1e-4 without a scheduler). The trainer
    # should pass the scheduled LM learning rate of the step instead (see module docstring).
    lr: float = 1e-3
    mu: float = 0.01  # μ: strength of the KL (Bregman) proximity term; smaller = bigger steps
    exclude_self: bool = False  # W_i = Σ_{j≠i} G_ij instead of Σ_j G_ij (reference: self term kept)
    normalize_by_mean_norm: bool = True  # divide W by mean_k ||g_k|| (the reference always does)
    clip_scores: bool = True  # clip η·W to [0, 5η] as in the released config
    # Per-domain gradient clipping before the scores (the reference's max_grad_norm); None or 0 = off.
    max_grad_norm: float | None = 5.0
    absent_domains: str = "keep_last"  # "keep_last" (reference, see docstring) | "zero"
    floor: float = 1e-3  # min weight of every domain
    initial_weights: dict[str, float] | None = None  # domain -> weight; None = uniform

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"mixing.lr must be > 0, got {self.lr}")
        if not self.mu > 0:
            raise ValueError(f"mixing.mu must be > 0, got {self.mu}")
        if self.max_grad_norm is not None and not (math.isfinite(self.max_grad_norm) and self.max_grad_norm >= 0):
            raise ValueError(f"mixing.max_grad_norm must be a finite number >= 0 or null, got {self.max_grad_norm}")
        if self.absent_domains not in DOGE_ABSENT:
            raise ValueError(f"mixing.absent_domains must be one of {DOGE_ABSENT}, got {self.absent_domains!r}")


def clip_gram(gram: np.ndarray, max_grad_norm: float | None) -> np.ndarray:
    """(K, K) Gram of the clipped gradients f_i g_i, f_i = min(1, c / (‖g_i‖ + 1e-6)) as clip_grad_norm_."""
    if not max_grad_norm:
        return gram
    norms = np.sqrt(np.maximum(np.diag(gram), 0.0))  # (K,)
    factor = np.minimum(1.0, max_grad_norm / (norms + _NORM_EPS))
    return gram * np.outer(factor, factor)


def doge_scores(gram: np.ndarray, present: np.ndarray, exclude_self: bool, normalize_by_mean_norm: bool) -> np.ndarray:
    """(K,) W_i = ⟨g_i, Σ_j g_j⟩ over the ``present`` rows (others 0), optionally / (mean ‖g_k‖ + 1e-6)."""
    w = alignment_scores(gram, exclude_self=exclude_self, present=present)
    if normalize_by_mean_norm:
        w = w / (mean_gradient_norm(gram, present) + _NORM_EPS)
    return np.where(present, w, 0.0)


class DoGEMixer(Mixer):
    method = "doge"
    needs = MixerNeeds(alignment=True)

    def __init__(self, domains: list[str], total_steps: int, seed: int, config: DoGEConfig):
        super().__init__(domains, config.floor, total_steps, seed)
        self.config = config
        self._weights = resolve_initial_weights(config.initial_weights, self.domains, self.floor)
        self._log_weights = np.log(np.maximum(self._weights, 1e-300))
        k = self.num_domains
        # Last known clipped Gram entries (the reference's stale gradient rows); never-seen rows are 0.
        self._last_gram = np.zeros((k, k))
        self._seen = np.zeros(k, dtype=bool)

    def _step_lr(self, stats: StepStats) -> float | None:
        if stats.lr is None:
            return self.config.lr
        lr = float(stats.lr)
        return lr if math.isfinite(lr) and lr >= 0 else None

    def _observe(self, stats: StepStats) -> dict[str, float]:
        cfg = self.config
        tokens = np.asarray(stats.token_count, dtype=np.float64)
        present = tokens > 0
        lr = self._step_lr(stats)
        if stats.gram is None or lr is None:
            self._skipped_total += 1
            return {}
        gram = np.asarray(stats.gram, dtype=np.float64)
        sub = gram[np.ix_(present, present)]
        if not present.any() or not np.all(np.isfinite(sub)):
            self._skipped_total += 1  # one bad Gram entry poisons every W_i: skip the whole step
            return {}
        with np.errstate(over="ignore", invalid="ignore"):
            clipped = clip_gram(np.where(np.outer(present, present), gram, 0.0), cfg.max_grad_norm)
            if cfg.absent_domains == "keep_last":
                known = self._last_gram.copy()
                known[np.ix_(present, present)] = clipped[np.ix_(present, present)]
                seen = self._seen | present
                w = doge_scores(known, seen, cfg.exclude_self, normalize_by_mean_norm=False)
                if cfg.normalize_by_mean_norm:
                    # mean over every domain's last row, never-seen rows counting as 0 (L418, L758)
                    w = w / (mean_gradient_norm(known) + _NORM_EPS)
            else:
                w = doge_scores(clipped, present, cfg.exclude_self, cfg.normalize_by_mean_norm)
            if stats.target_alignment is not None:
                # Told the target (mixing.target_domains; DoGE's out-of-domain branch, src/trainer.py L756):
                # W_i = <f_i g_i, g_T> with the training side clipped; the target's own clipping cannot be
                # read off this one vector.
                norms = np.sqrt(np.maximum(np.diag(gram), 0.0))
                factor = np.minimum(1.0, cfg.max_grad_norm / (norms + _NORM_EPS)) if cfg.max_grad_norm else 1.0
                target_sum = np.asarray(stats.target_alignment, dtype=np.float64) * (stats.num_targets or 1)
                w = np.where(present, factor * target_sum, 0.0)  # <f_i g_i, Σ_{k∈T} g_k>
                if cfg.normalize_by_mean_norm:
                    w = w / (float(np.mean((factor * norms)[present])) + _NORM_EPS)
            scores = lr * w
            if cfg.clip_scores:
                scores = np.clip(scores, 0.0, 5.0 * lr)
            candidate = self._log_weights + scores / cfg.mu
        if not (np.all(np.isfinite(candidate)) and np.all(np.isfinite(w))):
            self._skipped_total += 1
            return {}
        if cfg.absent_domains == "keep_last":
            self._last_gram, self._seen = known, seen
        p = stable_softmax(candidate)
        self._set_weights(p)
        # Keep log weights of the floored distribution so the next step starts from what was used.
        self._log_weights = np.log(np.maximum(self._weights, 1e-300))
        return {"mixer/reward": float(np.mean(w)), "mixer/lr": lr}

    def _state_dict(self) -> dict:
        return {"log_weights": self._log_weights.copy(), "last_gram": self._last_gram.copy(),
                "seen": self._seen.copy()}  # fmt: skip

    def _load_state_dict(self, sd: dict) -> None:
        self._log_weights = np.asarray(sd["log_weights"], dtype=np.float64).copy()
        k = self.num_domains
        # States saved before the stale-row memory existed start it empty (as a fresh run does).
        self._last_gram = np.asarray(sd.get("last_gram", np.zeros((k, k))), dtype=np.float64).copy()
        self._seen = np.asarray(sd.get("seen", np.zeros(k, dtype=bool)), dtype=bool).copy()
