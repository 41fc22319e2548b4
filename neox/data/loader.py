"""Micro-batches for one data-parallel rank, and the fixed per-domain validation set.

Every rank runs the same ``MixturePlan`` (the weights are broadcast from rank 0 before each
``set_weights``), so every rank computes the same global batch and keeps only its contiguous shard:
no communication is needed to agree on the data.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from neox.data.indexed import DomainCorpus
from neox.data.plan import MixturePlan
from neox.errors import ConfigError


def gather_samples(corpus: DomainCorpus, domain_b: np.ndarray, sample_b: np.ndarray) -> np.ndarray:
    """Token windows for (domain, global sample index) pairs; int64 (n, seq_len_tokens + 1)."""
    out = np.empty((domain_b.shape[0], corpus.seq_len_tokens + 1), dtype=np.int64)
    for k in np.unique(domain_b):
        rows = np.flatnonzero(domain_b == k)
        out[rows] = corpus.datasets[int(k)].get_many(sample_b[rows])
    return out


def rank_batch_sequences(global_batch_sequences: int, dp_size: int, micro_batch_sequences: int) -> int:
    """Sequences each of ``dp_size`` data-parallel ranks draws per optimizer step; refuses a global batch
    that does not split into whole micro-batches on every rank."""
    if micro_batch_sequences < 1 or global_batch_sequences % (micro_batch_sequences * dp_size):
        raise ConfigError(
            f"data.global_batch_sequences ({global_batch_sequences}) must be divisible by "
            f"data.micro_batch_sequences x data-parallel size = {micro_batch_sequences} x {dp_size}; "
            f"change the global batch or the micro-batch")
    return global_batch_sequences // dp_size


class MicroBatchLoader:
    """Splits each global batch of the plan into this rank's micro-batches."""

    def __init__(
        self,
        corpus: DomainCorpus,
        plan: MixturePlan,
        dp_rank: int = 0,
        dp_size: int = 1,
        micro_batch_sequences: int = 1,
    ) -> None:
        batch = plan.global_batch_sequences
        if plan.num_domains != corpus.num_domains:
            raise ValueError(f"plan has {plan.num_domains} domains, corpus has {corpus.num_domains}")
        if dp_size < 1 or not 0 <= dp_rank < dp_size:
            raise ValueError(f"need 0 <= dp_rank < dp_size, got dp_rank={dp_rank}, dp_size={dp_size}")
        per_rank = rank_batch_sequences(batch, dp_size, micro_batch_sequences)
        self.corpus = corpus
        self.plan = plan
        self.dp_rank = dp_rank
        self.dp_size = dp_size
        self.micro_batch_sequences = micro_batch_sequences
        self.rank_batch_sequences = per_rank
        self.num_micro_batches = per_rank // micro_batch_sequences

    def next_step(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's micro-batches for the next step: ``[(tokens[b, S+1], domain[b]), ...]``."""
        domain_b, sample_b = self.plan.next_global_batch()
        lo = self.dp_rank * self.rank_batch_sequences
        hi = lo + self.rank_batch_sequences
        domain_r, sample_r = domain_b[lo:hi], sample_b[lo:hi]
        tokens_r = torch.from_numpy(gather_samples(self.corpus, domain_r, sample_r))  # (B/D, S+1)
        domains_r = torch.from_numpy(domain_r)  # (B/D,)
        b = self.micro_batch_sequences
        return [(tokens_r[i : i + b], domains_r[i : i + b]) for i in range(0, self.rank_batch_sequences, b)]

    def state_dict(self) -> dict:
        return {"plan": self.plan.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.plan.load_state_dict(state["plan"])


class ValidationSet:
    """The first ``samples_per_domain`` samples of epoch 0 of every domain, fixed for a given seed."""

    def __init__(self, corpus: DomainCorpus, samples_per_domain: int, micro_batch_sequences: int) -> None:
        if samples_per_domain < 1:
            raise ValueError(f"samples_per_domain must be >= 1, got {samples_per_domain}")
        if micro_batch_sequences < 1:
            raise ValueError(f"micro_batch_sequences must be >= 1, got {micro_batch_sequences}")
        self.corpus = corpus
        self.micro_batch_sequences = micro_batch_sequences
        # A domain smaller than the request contributes all it has rather than repeating samples.
        self.num_samples_per_domain = [min(samples_per_domain, ds.num_samples) for ds in corpus.datasets]
        self._domain = np.concatenate(
            [np.full(n, k, dtype=np.int64) for k, n in enumerate(self.num_samples_per_domain)]
        )  # (N_total,)
        self._sample = np.concatenate([np.arange(n, dtype=np.int64) for n in self.num_samples_per_domain])

    @property
    def num_samples(self) -> int:
        return int(self._domain.shape[0])

    def rank_slice(self, dp_rank: int, dp_size: int) -> slice:
        """Contiguous share of rank ``dp_rank``; shares differ in size by at most one sample."""
        if dp_size < 1 or not 0 <= dp_rank < dp_size:
            raise ValueError(f"need 0 <= dp_rank < dp_size, got dp_rank={dp_rank}, dp_size={dp_size}")
        base, extra = divmod(self.num_samples, dp_size)
        lo = dp_rank * base + min(dp_rank, extra)
        return slice(lo, lo + base + (1 if dp_rank < extra else 0))

    def num_batches(self, dp_rank: int = 0, dp_size: int = 1) -> int:
        share = self.rank_slice(dp_rank, dp_size)
        return -(-(share.stop - share.start) // self.micro_batch_sequences)

    def batches(self, dp_rank: int = 0, dp_size: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(tokens[b, S+1], domain[b])`` for this rank; over all ranks every sample appears once.

        The last batch of a rank may be shorter than ``micro_batch_sequences``, and ranks may differ
        by one batch (see ``num_batches``): reduce per-domain sums across ranks, not means.
        """
        share = self.rank_slice(dp_rank, dp_size)
        domain, sample = self._domain[share], self._sample[share]
        b = self.micro_batch_sequences
        for i in range(0, domain.shape[0], b):
            tokens = gather_samples(self.corpus, domain[i : i + b], sample[i : i + b])
            yield torch.from_numpy(tokens), torch.from_numpy(domain[i : i + b].copy())
