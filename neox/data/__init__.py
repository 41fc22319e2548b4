"""Per-domain token data: datasets, the mixture plan, and the micro-batch loader.

Domain ids. ``open_domains`` returns a ``DomainCorpus`` whose ``names`` are the domains in manifest
order (sorted by name, as ``tools/preprocess_data.py`` writes them) or in the order of the
``domains=`` argument. Domain id ``k`` everywhere (the ``domain`` tensor of every micro-batch, the
plan's ``domain_B``, mixture weight ``w[k]``, per-domain losses) is the index of the domain in
``corpus.names``. Open the train and validation corpora with the same ``domains`` list (or both
with ``None``) so that ids agree between them. Each domain's samples are shuffled per epoch from
``(seed, k, epoch)``, so the same ``domains`` order also reproduces the same samples.

Flow per step::

    plan.set_weights(w)                       # every update_interval_steps, w broadcast from rank 0
    micro_batches = loader.next_step()        # plan.next_global_batch() -> this rank's shard
    for tokens_bS1, domain_b in micro_batches: ...

Only ``open_domains``/``DomainDataset`` import megatron-core (lazily: its import takes seconds).
"""

from neox.data.indexed import DataFileError, DomainCorpus, DomainDataset, open_domains, read_manifest
from neox.data.loader import MicroBatchLoader, ValidationSet, gather_samples
from neox.data.plan import MixturePlan, largest_remainder_counts

__all__ = [
    "DataFileError",
    "DomainCorpus",
    "DomainDataset",
    "MicroBatchLoader",
    "MixturePlan",
    "ValidationSet",
    "gather_samples",
    "largest_remainder_counts",
    "open_domains",
    "read_manifest",
]
