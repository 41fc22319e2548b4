"""The Mixer protocol: per-step statistics in, domain weights out.

A mixer is driven by the trainer once per optimizer step:

    w = mixer.weights()          # (K,) weights for the next segment of training
    ... train one step with w ...
    metrics = mixer.observe(StepStats(...))   # statistics of that step -> update

Every mixer keeps its weights finite, on the simplex and >= ``floor`` after every call, whatever the
statistics (absent domains, NaN/inf losses or Gram entries): a bad statistic skips the update for that
domain or that step, and the skip is counted and reported in the metrics (``mixer/skipped``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np


@dataclass
class StepStats:
    """Statistics of one optimizer step, already summed over micro-batches and ranks."""

    step: int  # optimizer steps completed, including this one (1-based)
    total_steps: int  # planned length of the run (for the progress feature)
    loss_sum: np.ndarray  # (K,) float64, sum of per-token training losses of domain k
    token_count: np.ndarray  # (K,) tokens of domain k this step (0 = domain absent)
    sample_count: np.ndarray  # (K,) sequences of domain k this step
    # (K, K) <g_i, g_j>, g_k = gradient of domain k's MEAN loss w.r.t. the probe layers' weights (summed
    # over probe layers); rows/cols of absent domains 0.
    gram: np.ndarray | None = None
    probe_norms: np.ndarray | None = None  # (P,) Frobenius norms of the P state-probe weight matrices
    ref_loss_sum: np.ndarray | None = None  # (K,) DoReMi: reference model's per-token loss sums
    excess_loss_sum: np.ndarray | None = None  # (K,) DoReMi: sum over tokens of max(l_theta - l_ref, 0)
    # The LM learning rate in force during this step (the scheduler's value the optimizer stepped with).
    # DoGE scales its update by it (the reference's lr_t); None = the mixer's configured fallback.
    lr: float | None = None
    # (K,) the weights the step's batch was drawn with (the plan's, which may lag the mixer's latest
    # proposal when mixing.update_interval_steps > 1); None = the mixer's own current weights.
    weights: np.ndarray | None = None
    # (K,) <g_i, g_T>: each domain's gradient against g_T = (1/|T|) Σ_{k∈T} g_k, the gradient of the mean
    # loss of the target domains T (mixing.target_domains; T may hold domains that are never trained on).
    # None = T is every domain (then g_T is the mean of the Gram's rows).
    target_alignment: np.ndarray | None = None
    num_targets: int | None = None  # |T| (with target_alignment)
    # (K,) 1 for the training domains that are targets (their self term is inside target_alignment),
    # 0 otherwise; None = every domain is a target.
    target_mask: np.ndarray | None = None
    # (K, K) <g_i at this step, g_j at the previous step> (see neox StepStatistics); None if unknown.
    gram_cross: np.ndarray | None = None

    @property
    def realised_shares(self) -> np.ndarray:
        """(K,) each domain's share of the step's sequences: what the batch really held."""
        counts = np.asarray(self.sample_count, dtype=np.float64)
        total = counts.sum()
        return counts / total if total > 0 else np.full(counts.shape, 1.0 / counts.shape[0])

    @property
    def loss_mean(self) -> np.ndarray:
        """(K,) per-token mean loss of each domain, NaN where the domain is absent."""
        loss_sum = np.asarray(self.loss_sum, dtype=np.float64)
        tokens = np.asarray(self.token_count, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(tokens > 0, loss_sum / np.where(tokens > 0, tokens, 1.0), np.nan)


@dataclass(frozen=True)
class MixerNeeds:
    """Which optional statistics the trainer must collect for a mixer."""

    alignment: bool = False  # StepStats.gram
    probe_norms: bool = False  # StepStats.probe_norms (AC-ODM state)
    reference_losses: bool = False  # StepStats.ref_loss_sum / excess_loss_sum


# --------------------------------------------------------------------------------------------------
# helpers shared by the mixers


C = TypeVar("C")


def build_config(cls: type[C], params: dict[str, Any], method: str) -> C:
    """``cls(**params)`` with a clear error naming an unknown key and the closest known one."""
    known = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    for key in params:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"unknown parameter {key!r} for mixing method {method!r}.{hint} "
                f"Known parameters: {', '.join(sorted(known))}."
            )
    return cls(**params)


def check_floor(floor: float, num_domains: int) -> None:
    if not (math.isfinite(floor) and floor >= 0.0):
        raise ValueError(f"mixing.floor must be a finite number >= 0, got {floor!r}")
    if floor * num_domains >= 1.0:
        raise ValueError(
            f"mixing.floor={floor} is too large for {num_domains} domains (floor * K must be < 1); "
            f"use a floor below {1.0 / num_domains:.3g}"
        )


def apply_floor(p: np.ndarray, floor: float) -> np.ndarray:
    """Mix a distribution with the uniform floor: w = floor + (1 - K*floor) * p.

    ``p`` is first cleaned (non-finite or negative entries -> 0) and renormalised (uniform if nothing is
    left), so the result is always finite, sums to 1 and every entry is >= floor exactly.
    """
    p = np.asarray(p, dtype=np.float64).copy()
    p[~np.isfinite(p) | (p < 0)] = 0.0
    total = p.sum()
    num_domains = p.shape[0]
    if not (math.isfinite(total) and total > 0):
        p = np.full(num_domains, 1.0 / num_domains)
    else:
        p = p / total
    return floor + (1.0 - num_domains * floor) * p


def stable_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    z = np.exp(x - np.max(x))
    return z / z.sum()


def resolve_initial_weights(
    initial_weights: dict[str, float] | None, domains: list[str], floor: float
) -> np.ndarray:
    """Domain->weight dict (or None = uniform) -> (K,) weights on the simplex with the floor applied."""
    num_domains = len(domains)
    if initial_weights is None:
        return apply_floor(np.full(num_domains, 1.0 / num_domains), floor)
    if not isinstance(initial_weights, dict):
        raise ValueError(
            f"mixing.initial_weights must be a mapping domain -> weight or null, got {type(initial_weights).__name__}"
        )
    unknown = sorted(set(initial_weights) - set(domains))
    missing = [d for d in domains if d not in initial_weights]
    if unknown or missing:
        raise ValueError(
            f"mixing.initial_weights must name exactly the run's domains; unknown: {unknown}, missing: {missing}"
        )
    w = np.array([float(initial_weights[d]) for d in domains], dtype=np.float64)
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"mixing.initial_weights must be finite, >= 0 and not all zero, got {initial_weights}")
    return apply_floor(w / w.sum(), floor)


def is_valid_weights(w: np.ndarray, floor: float) -> bool:
    return bool(
        np.all(np.isfinite(w)) and abs(float(w.sum()) - 1.0) <= 1e-9 and np.all(w >= floor * (1 - 1e-12))
    )


def rng_state(rng: np.random.Generator) -> dict:
    """JSON-able state of a numpy Generator (PCG64's state holds Python ints; json keeps them exact)."""
    return rng.bit_generator.state


def set_rng_state(rng: np.random.Generator, state: dict) -> None:
    rng.bit_generator.state = state


# --------------------------------------------------------------------------------------------------


class Mixer(ABC):
    """Base class: weight bookkeeping, validation, time average and skip counting.

    Subclasses implement ``_observe`` (update ``self._weights`` and return metrics) and
    ``_state_dict`` / ``_load_state_dict`` for their own state.
    """

    method: str = ""
    needs: MixerNeeds = MixerNeeds()

    def __init__(self, domains: list[str], floor: float, total_steps: int, seed: int):
        if not domains or len(set(domains)) != len(domains):
            raise ValueError(f"mixing needs a non-empty list of distinct domain names, got {domains!r}")
        check_floor(floor, len(domains))
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.domains = list(domains)
        self.num_domains = len(domains)
        self.floor = float(floor)
        self.total_steps = int(total_steps)
        self.seed = int(seed)
        self._weights = np.full(self.num_domains, 1.0 / self.num_domains)
        self._weight_sum = np.zeros(self.num_domains)  # sum of the weights produced by observe()
        self._num_observed = 0
        self._skipped_total = 0  # steps or domains whose update was skipped (bad/missing statistics)

    # ---- protocol ------------------------------------------------------------------------------

    def weights(self) -> np.ndarray:
        """(K,) float64 on the simplex, every entry >= floor: the weights for the next segment."""
        return self._weights.copy()

    def observe(self, stats: StepStats) -> dict[str, float]:
        self._check_shapes(stats)
        skipped_before = self._skipped_total
        metrics = self._observe(stats)
        assert is_valid_weights(self._weights, self.floor), self._weights
        self._weight_sum += self._weights
        self._num_observed += 1
        metrics["mixer/skipped"] = float(self._skipped_total - skipped_before)
        metrics["mixer/skipped_total"] = float(self._skipped_total)
        return metrics

    def average_weights(self) -> np.ndarray:
        """Time average of the weights produced by every observe() so far (current weights before any)."""
        if self._num_observed == 0:
            return self.weights()
        return self._weight_sum / self._num_observed

    def state_dict(self) -> dict:
        return {
            "method": self.method,
            "domains": list(self.domains),
            "weights": self._weights.copy(),
            "weight_sum": self._weight_sum.copy(),
            "num_observed": self._num_observed,
            "skipped_total": self._skipped_total,
            "mixer": self._state_dict(),
        }

    def load_state_dict(self, sd: dict) -> None:
        if sd.get("method") != self.method:
            raise ValueError(f"mixer state is for method {sd.get('method')!r}, this mixer is {self.method!r}")
        if list(sd["domains"]) != self.domains:
            raise ValueError(f"mixer state is for domains {list(sd['domains'])}, this run has {self.domains}")
        self._weights = np.asarray(sd["weights"], dtype=np.float64).copy()
        self._weight_sum = np.asarray(sd["weight_sum"], dtype=np.float64).copy()
        self._num_observed = int(sd["num_observed"])
        self._skipped_total = int(sd["skipped_total"])
        self._load_state_dict(sd["mixer"])

    # ---- for subclasses --------------------------------------------------------------------------

    @abstractmethod
    def _observe(self, stats: StepStats) -> dict[str, float]: ...

    def _state_dict(self) -> dict:
        return {}

    def _load_state_dict(self, sd: dict) -> None:
        pass

    def _set_weights(self, p: np.ndarray) -> None:
        self._weights = apply_floor(p, self.floor)

    def _check_shapes(self, stats: StepStats) -> None:
        k = self.num_domains
        for name in ("loss_sum", "token_count", "sample_count"):
            arr = np.asarray(getattr(stats, name))
            if arr.shape != (k,):
                raise ValueError(f"StepStats.{name} must have shape ({k},) for {k} domains, got {arr.shape}")
        for name in ("ref_loss_sum", "excess_loss_sum"):
            value = getattr(stats, name)
            if value is not None and np.asarray(value).shape != (k,):
                raise ValueError(f"StepStats.{name} must have shape ({k},), got {np.asarray(value).shape}")
        if stats.gram is not None and np.asarray(stats.gram).shape != (k, k):
            raise ValueError(f"StepStats.gram must have shape ({k}, {k}), got {np.asarray(stats.gram).shape}")

    def _present(self, stats: StepStats) -> np.ndarray:
        """(K,) bool: domain had tokens this step and a finite mean loss."""
        loss_mean = stats.loss_mean
        tokens = np.asarray(stats.token_count, dtype=np.float64)
        return (tokens > 0) & np.isfinite(loss_mean)
