"""DoReMi (Xie et al., arXiv 2305.10429): Group-DRO exponentiated gradient on per-domain excess loss.

λ_i = (Σ_{tokens of i} max(ℓ_θ − ℓ_ref, 0)) / tokens_i, against a frozen reference model;
α' = α ⊙ exp(η λ);  α = (1 − c)·α'/Σα' + c/K  (η = 1, c = 1e-3 in the paper and the released scripts).

Defaults follow the released code, sangmichaelxie/doremi at 7cde52d:

- A domain absent from the step reuses its last score λ_i (``doremi/trainer.py`` L251-L256); the scores
  start at ln|V| (``doremi/train.py`` L273, ``np.log(len(tokenizer))``), so a domain not yet seen counts
  as having the excess loss of a uniform predictor. ``initial_excess_loss`` sets that start directly;
  by default it is ln(``vocab_size``), 50,277 being the released scripts' tokenizer (GPT-NeoX-20B via
  RedPajama-INCITE). Trainers should pass the run's vocabulary size. ``absent_domains="zero"`` is this
  project's earlier form (absent domains get λ = 0 for the step).
- The exponentiated step and the smoothing: ``doremi/trainer.py`` L257-L259 (``reweight_eta`` = 1,
  ``reweight_eps`` = 1e-3 in ``scripts/runs/run_pile_doremi120M.sh``; the argument default is 1e-4).
- The published output is the running average of α *including the initial weights*: the average buffer
  starts as the initial weights with a counter of 1 (``doremi/train.py`` L272, L274) and each update
  averages the new α in (``doremi/trainer.py`` L157-L160). ``average_weights()`` does the same here
  (the base class, used by DoGE and ODM, averages the produced weights only).

A non-finite λ for a present domain is a bad statistic: that domain keeps its last score for the step,
and the skip is counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from acodm.mixers.base import Mixer, MixerNeeds, StepStats, resolve_initial_weights

DOREMI_ABSENT = ("keep_last", "zero")


@dataclass
class DoReMiConfig:
    lr: float = 1.0  # η: step size of the exponentiated-gradient update
    smoothing: float = 1e-3  # c: mixing with the uniform distribution, α = (1−c)·α'/Σα' + c/K
    floor: float = 0.0  # extra min weight on top of the smoothing (c/K already bounds weights below)
    initial_weights: dict[str, float] | None = None  # domain -> weight; None = uniform
    absent_domains: str = "keep_last"  # "keep_last" (reference: last λ, starting at ln|V|) | "zero"
    vocab_size: int = 50277  # |V| for the initial score ln|V|; set it to the model's tokenizer size
    initial_excess_loss: float | None = None  # λ before a domain's first observation; None = ln(vocab_size)

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"mixing.lr must be > 0, got {self.lr}")
        if not 0.0 <= self.smoothing <= 1.0:
            raise ValueError(f"mixing.smoothing must be in [0, 1], got {self.smoothing}")
        if self.absent_domains not in DOREMI_ABSENT:
            raise ValueError(f"mixing.absent_domains must be one of {DOREMI_ABSENT}, got {self.absent_domains!r}")
        if not (isinstance(self.vocab_size, int) and self.vocab_size >= 2):
            raise ValueError(f"mixing.vocab_size must be an integer >= 2 (the tokenizer's size), "
                             f"got {self.vocab_size!r}")  # fmt: skip
        if self.initial_excess_loss is not None and not (
            math.isfinite(self.initial_excess_loss) and self.initial_excess_loss >= 0
        ):
            raise ValueError(f"mixing.initial_excess_loss must be a finite number >= 0 or null, "
                             f"got {self.initial_excess_loss}")  # fmt: skip

    @property
    def initial_score(self) -> float:
        return math.log(self.vocab_size) if self.initial_excess_loss is None else float(self.initial_excess_loss)


class DoReMiMixer(Mixer):
    method = "doremi"
    needs = MixerNeeds(reference_losses=True)

    def __init__(self, domains: list[str], total_steps: int, seed: int, config: DoReMiConfig):
        super().__init__(domains, config.floor, total_steps, seed)
        self.config = config
        self._weights = resolve_initial_weights(config.initial_weights, self.domains, self.floor)
        self._initial = self._weights.copy()
        # α kept in log space: exp(η λ) never overflows there
        self._log_alpha = np.log(np.maximum(self._weights, 1e-300))
        self._scores = np.full(self.num_domains, config.initial_score)  # λ, last known per domain

    def _observe(self, stats: StepStats) -> dict[str, float]:
        cfg = self.config
        k = self.num_domains
        if stats.excess_loss_sum is None:
            self._skipped_total += 1
            return {}
        tokens = np.asarray(stats.token_count, dtype=np.float64)
        excess_sum = np.asarray(stats.excess_loss_sum, dtype=np.float64)
        present = tokens > 0
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            excess = np.where(present, excess_sum / np.where(present, tokens, 1.0), 0.0)  # λ, (K,)
        bad = present & ~np.isfinite(excess)
        self._skipped_total += int(bad.sum())
        fresh = present & ~bad
        excess = np.maximum(excess, 0.0)  # max(·, 0) is already in the sum; guard rounding
        if cfg.absent_domains == "keep_last":
            scores = np.where(fresh, excess, self._scores)
        else:
            scores = np.where(fresh, excess, 0.0)
        with np.errstate(over="ignore", invalid="ignore"):  # huge finite λ: caught by the check below
            log_alpha_prime = self._log_alpha + cfg.lr * scores
        if not np.all(np.isfinite(log_alpha_prime)):
            self._skipped_total += 1
            return {}
        self._scores = scores
        alpha_prime = np.exp(log_alpha_prime - log_alpha_prime.max())
        alpha = (1 - cfg.smoothing) * alpha_prime / alpha_prime.sum() + cfg.smoothing / k
        self._set_weights(alpha)
        self._log_alpha = np.log(np.maximum(self._weights, 1e-300))  # c = floor = 0 may underflow to 0
        return {"mixer/reward": float(np.mean(excess[fresh])) if fresh.any() else 0.0}

    def average_weights(self) -> np.ndarray:
        """Average of the initial weights and every produced α, as the reference's avg_domain_weights."""
        return (self._initial + self._weight_sum) / (self._num_observed + 1)

    def _state_dict(self) -> dict:
        return {"log_alpha": self._log_alpha.copy(), "scores": self._scores.copy()}

    def _load_state_dict(self, sd: dict) -> None:
        self._log_alpha = np.asarray(sd["log_alpha"], dtype=np.float64).copy()
        # States saved before scores were kept start from the initial score (as a fresh run does).
        self._scores = np.asarray(sd.get("scores", np.full(self.num_domains, self.config.initial_score)),
                                  dtype=np.float64).copy()  # fmt: skip
