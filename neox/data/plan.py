"""The mixture plan: which domain and which sample fills each slot of every global batch.

Every global batch of ``B`` sequences holds exactly ``largest_remainder_counts(w, B, min)`` samples of
each domain (the largest-remainder rounding of ``w_k * B``; the same rule that makes Megatron's
blending helper track its target weights without drift, applied per batch so that each step's
per-domain losses come from exactly known sample counts). Domain ``k``'s slots take its next
``c_k`` global sample indices ``cursor_k, ..., cursor_k + c_k - 1``, and the cursor advances. The
cursors never reset when the weights change, so a domain's samples are consumed in order: none
repeats before its epoch is used up and none is skipped (``DomainDataset`` maps a global index to a
shuffled window of the right epoch).

The slot order within a batch is a permutation keyed by a counter-based hash of ``(seed, step)``:
it needs no RNG state, so a plan resumed at step ``t`` produces exactly what an uninterrupted one does.
The slot orders of ``segment_steps`` steps are computed at once with numpy and survive weight
changes (they do not depend on the weights); memory is O(K + segment_steps * B), independent of the
number of training steps.
"""

from __future__ import annotations

import numpy as np

_GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """Counter-based 64-bit mixer (Steele et al., SplitMix64); vectorised and platform independent."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def largest_remainder_counts(weights: np.ndarray, total: int, min_count: int = 0) -> np.ndarray:
    """Integer counts summing to ``total`` that round ``weights * total`` by largest remainder.

    With ``min_count > 0`` every domain gets at least ``min_count``: domains that would fall below
    are pinned there and the rest of ``total`` is re-apportioned over the others by their weights
    (repeated until no further domain falls below), so the rule reduces to plain largest remainder
    whenever the floor does not bind. Ties in the remainder go to the lower domain index.
    """
    w = np.asarray(weights, dtype=np.float64)
    num_domains = w.shape[0]
    if num_domains * min_count > total:
        raise ValueError(
            f"min_samples_per_domain={min_count} x {num_domains} domains = {num_domains * min_count} "
            f"exceeds the global batch of {total} sequences; lower min_samples_per_domain"
        )
    pinned = np.zeros(num_domains, dtype=bool)
    while True:
        free = ~pinned
        remaining = total - min_count * int(pinned.sum())
        w_free = np.where(free, w, 0.0)
        mass = w_free.sum()
        # All free weight is zero (possible once the floor binds): spread the remainder evenly.
        share = w_free / mass if mass > 0 else free / free.sum()
        quota = share * remaining  # (K,)
        counts = np.floor(quota).astype(np.int64)
        counts[~free] = 0
        short = remaining - int(counts.sum())
        if short > 0:
            remainder = np.where(free, quota - counts, -1.0)
            # Stable sort on -remainder: ties keep index order, so the result is deterministic.
            counts[np.argsort(-remainder, kind="stable")[:short]] += 1
        counts[pinned] = min_count
        newly_short = free & (counts < min_count)
        if not newly_short.any():
            assert counts.sum() == total and (counts >= min_count).all()
            return counts
        pinned |= newly_short


def _validate_weights(weights, num_domains: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape[0] != num_domains:
        raise ValueError(f"mixture weights have {w.shape[0]} entries, expected one per domain ({num_domains})")
    if not np.all(np.isfinite(w)) or (w < 0).any():
        raise ValueError(f"mixture weights must be finite and >= 0, got {w.tolist()}")
    total = w.sum()
    # Weights arrive as float32 broadcast from rank 0; allow its rounding, reject real mistakes.
    if abs(total - 1.0) > 1e-3:
        raise ValueError(f"mixture weights must sum to 1 (on the simplex), got sum {total:.6f}")
    return w / total


class MixturePlan:
    """Per-step (domain, global sample index) for every slot of the global batch."""

    def __init__(
        self,
        samples_per_epoch: list[int],
        global_batch_sequences: int,
        seed: int,
        min_samples_per_domain: int = 0,
        initial_weights: np.ndarray | None = None,
        segment_steps: int = 64,
    ) -> None:
        self.samples_per_epoch = np.asarray(samples_per_epoch, dtype=np.int64)
        self.num_domains = int(self.samples_per_epoch.shape[0])
        if self.num_domains < 1:
            raise ValueError("MixturePlan needs at least one domain")
        if (self.samples_per_epoch < 1).any():
            raise ValueError(f"every domain needs >= 1 sample per epoch, got {self.samples_per_epoch.tolist()}")
        if global_batch_sequences < 1:
            raise ValueError(f"global_batch_sequences must be >= 1, got {global_batch_sequences}")
        if min_samples_per_domain < 0:
            raise ValueError(f"min_samples_per_domain must be >= 0, got {min_samples_per_domain}")
        if segment_steps < 1:
            raise ValueError(f"segment_steps must be >= 1, got {segment_steps}")
        self.global_batch_sequences = int(global_batch_sequences)
        self.seed = int(seed)
        self.min_samples_per_domain = int(min_samples_per_domain)
        self.segment_steps = int(segment_steps)
        if self.num_domains * self.min_samples_per_domain > self.global_batch_sequences:
            raise ValueError(
                f"min_samples_per_domain={self.min_samples_per_domain} x {self.num_domains} domains "
                f"exceeds global_batch_sequences={self.global_batch_sequences}"
            )
        self.step = 0
        self.cursors = np.zeros(self.num_domains, dtype=np.int64)  # next global sample index per domain
        if initial_weights is None:
            initial_weights = np.full(self.num_domains, 1.0 / self.num_domains)
        self._weights = _validate_weights(initial_weights, self.num_domains)
        self._set_counts()
        self._drop_orders()

    # --- weights ----------------------------------------------------------------------------------
    @property
    def weights(self) -> np.ndarray:
        return self._weights.copy()

    @property
    def counts_per_batch(self) -> np.ndarray:
        """Samples of each domain in every global batch under the weights in force, (K,) int64."""
        return self._counts.copy()

    def set_weights(self, weights: np.ndarray) -> None:
        """Weights for every global batch from the next one on."""
        w = _validate_weights(weights, self.num_domains)
        if np.array_equal(w, self._weights):
            return
        self._weights = w
        self._set_counts()

    # --- batches ----------------------------------------------------------------------------------
    def _set_counts(self) -> None:
        """Per-slot layout of an unshuffled batch under the weights in force (all (B,))."""
        self._counts = largest_remainder_counts(self._weights, self.global_batch_sequences,
                                                self.min_samples_per_domain)
        first_slot = np.concatenate([[0], np.cumsum(self._counts)[:-1]])  # (K,)
        self._domain_of_slot = np.repeat(np.arange(self.num_domains, dtype=np.int64), self._counts)
        self._offset_in_domain = np.arange(self.global_batch_sequences) - first_slot[self._domain_of_slot]

    def _drop_orders(self) -> None:
        self._orders_first_step = -1
        self._orders = np.empty((0, self.global_batch_sequences), dtype=np.int64)

    def slot_order(self, steps: np.ndarray) -> np.ndarray:
        """Permutation of the B slots for each step, (n, B); a pure function of (seed, step)."""
        steps = np.asarray(steps, dtype=np.uint64)
        seed_key = _splitmix64(np.array([self.seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
        step_key = _splitmix64(seed_key ^ steps)  # (n,)
        with np.errstate(over="ignore"):
            slots = np.arange(self.global_batch_sequences, dtype=np.uint64) * _GOLDEN_GAMMA  # (B,)
            keys = _splitmix64(step_key[:, None] + slots[None, :])  # (n, B)
        return np.argsort(keys, axis=1, kind="stable")

    def next_global_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """``(domain_B, sample_B)`` int64 arrays of shape (B,) for the current step; advances the step."""
        row = self.step - self._orders_first_step
        if self._orders_first_step < 0 or row >= self._orders.shape[0]:
            # The slot orders do not depend on the weights, so one segment of them survives any number
            # of set_weights calls; only the cheap per-slot layout is redone on a weight change.
            self._orders = self.slot_order(np.arange(self.step, self.step + self.segment_steps))
            self._orders_first_step, row = self.step, 0
        order = self._orders[row]  # (B,)
        # Unshuffled slot j holds domain d's sample cursor_d + (j - first slot of d).
        sample = self.cursors[self._domain_of_slot] + self._offset_in_domain  # (B,)
        domain_b = self._domain_of_slot[order]
        sample_b = sample[order]
        self.step += 1
        self.cursors += self._counts
        return domain_b, sample_b

    def epochs_consumed(self) -> np.ndarray:
        """Fraction of an epoch (can exceed 1) each domain has used so far, (K,) float."""
        return self.cursors / self.samples_per_epoch

    # --- checkpointing ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "step": int(self.step),
            "cursors": [int(c) for c in self.cursors],
            "weights": [float(x) for x in self._weights],
            "seed": self.seed,
            "global_batch_sequences": self.global_batch_sequences,
            "min_samples_per_domain": self.min_samples_per_domain,
            "samples_per_epoch": [int(n) for n in self.samples_per_epoch],
        }

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "global_batch_sequences", "min_samples_per_domain"):
            if int(state[key]) != getattr(self, key):
                raise ValueError(
                    f"plan checkpoint has {key}={state[key]} but this run has {getattr(self, key)}; "
                    "resume with the same data config"
                )
        if list(state["samples_per_epoch"]) != self.samples_per_epoch.tolist():
            raise ValueError(
                f"plan checkpoint was made on domains with samples_per_epoch={state['samples_per_epoch']}, "
                f"this run has {self.samples_per_epoch.tolist()}; the data or seq_len changed"
            )
        self.step = int(state["step"])
        self.cursors = np.asarray(state["cursors"], dtype=np.int64).copy()
        _validate_weights(state["weights"], self.num_domains)
        # Taken verbatim (not renormalised) so the counts are bit-for-bit those of the saved run.
        self._weights = np.asarray(state["weights"], dtype=np.float64).copy()
        self._set_counts()
        self._drop_orders()
