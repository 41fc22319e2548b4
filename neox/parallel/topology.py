"""Process topology: one object built from (pipe, data, tensor) that hands out process groups.

Nothing here is global: the trainer builds a ``Topology`` once and passes it (or the groups it hands out)
to whoever needs one — DeepSpeed (``mpu``), the data loader (data-parallel rank and size), the mixer
callback and the statistics all-reduce (the whole job).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist

from neox.model.config import ConfigError


@dataclass
class Topology:
    pipe: int
    tensor: int
    data: int
    rank: int

    @classmethod
    def build(cls, pipe: int, tensor: int, world_size: int, rank: int) -> "Topology":
        if world_size % (pipe * tensor):
            raise ConfigError(f"world size {world_size} is not divisible by parallel.pipe x parallel.tensor "
                              f"= {pipe} x {tensor}")
        if pipe > 1 or tensor > 1:
            # The layer specs, tensor-parallel layers and pipeline schedule are not built yet; refuse rather
            # than silently train a data-parallel model under a layout the user asked for.
            raise ConfigError(f"parallel.pipe={pipe}, parallel.tensor={tensor}: pipeline and tensor parallelism "
                              f"are not available yet; use parallel.pipe=1 parallel.tensor=1 (data parallel + ZeRO)")
        return cls(pipe=pipe, tensor=tensor, data=world_size // (pipe * tensor), rank=rank)

    @property
    def world_size(self) -> int:
        return self.pipe * self.tensor * self.data

    @property
    def dp_rank(self) -> int:
        return self.rank  # data parallelism only (build() refuses the rest): every rank is a replica

    @property
    def dp_size(self) -> int:
        return self.data

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def world_group(self) -> dist.ProcessGroup | None:
        """The group over which the per-step statistics are summed (None: the default world group)."""
        return None
