"""Process topology: one object built from (pipe, data, tensor) that hands out ranks and process groups.

Nothing here is global: the trainer builds a ``Topology`` once and passes it (or what it hands out) to
whoever needs it -- DeepSpeed (``mpu``, or the pipeline's ``topology``), the data loader (data-parallel
rank and size), the mixer callback and the statistics all-reduce (the whole job).

Rank layout is DeepSpeed's ``PipeModelDataParallelTopology``: axes (pipe, data, model), tensor ("model")
fastest, so the ranks of one tensor-parallel group are neighbours (one node) and pipeline stages are
furthest apart. With ``pipe=2, tensor=1`` on 4 ranks: stage 0 = ranks {0, 1}, stage 1 = {2, 3}; with
``tensor=2`` on 4 ranks: TP groups {0, 1}, {2, 3}, data-parallel replicas 0 and 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch.distributed as dist

from neox.errors import ConfigError


def data_parallel_size(world_size: int, pipe: int, tensor: int) -> int:
    """How many data-parallel replicas ``world_size`` processes make; refuses a layout that does not divide it."""
    if pipe < 1 or tensor < 1:
        raise ConfigError(f"parallel.pipe and parallel.tensor must be >= 1, got {pipe} and {tensor}")
    if world_size % (pipe * tensor):
        raise ConfigError(f"world size {world_size} is not divisible by parallel.pipe x parallel.tensor "
                          f"= {pipe} x {tensor}; launch a multiple of {pipe * tensor} processes")
    return world_size // (pipe * tensor)


@dataclass
class Topology:
    pipe: int
    tensor: int
    data: int
    rank: int
    _grid: Any = field(default=None, repr=False)

    @classmethod
    def build(cls, pipe: int, tensor: int, world_size: int, rank: int) -> "Topology":
        data = data_parallel_size(world_size, pipe, tensor)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of {world_size}")
        return cls(pipe=pipe, tensor=tensor, data=data, rank=rank)

    # ------------------------------------------------------------------ coordinates (pure arithmetic)

    @property
    def world_size(self) -> int:
        return self.pipe * self.tensor * self.data

    def ds_topology(self):
        """DeepSpeed's PipeModelDataParallelTopology for this layout (no process groups)."""
        from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

        return PipeModelDataParallelTopology(num_pp=self.pipe, num_mp=self.tensor, num_dp=self.data)

    def coordinates(self, rank: int | None = None) -> tuple[int, int, int]:
        """(stage, dp rank, tp rank) of ``rank`` (default: this process)."""
        r = self.rank if rank is None else rank
        tp = r % self.tensor
        dp = (r // self.tensor) % self.data
        stage = r // (self.tensor * self.data)
        return stage, dp, tp

    @property
    def stage(self) -> int:
        return self.coordinates()[0]

    @property
    def dp_rank(self) -> int:
        return self.coordinates()[1]

    @property
    def tp_rank(self) -> int:
        return self.coordinates()[2]

    @property
    def dp_size(self) -> int:
        return self.data

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.stage == self.pipe - 1

    @property
    def is_model_parallel(self) -> bool:
        return self.pipe > 1 or self.tensor > 1

    @property
    def counts_losses(self) -> bool:
        """Whether this rank's per-token losses enter the job-wide sums: the tensor-parallel ranks of a
        replica all compute the same losses, so only TP rank 0 adds them (on the last pipeline stage,
        the only one that has them)."""
        return self.tp_rank == 0 and self.is_last_stage

    # ------------------------------------------------------------------ process groups (collective)

    @property
    def grid(self):
        """DeepSpeed's PipelineParallelGrid over this layout: it creates every group (data, pipe, model,
        tensor slice) in the same order on all ranks and is the ``mpu`` DeepSpeed's engine reads
        (get_data_parallel_*, get_model_parallel_*, get_tensor_model_parallel_*, get_pipe_parallel_group).
        Built on first use, a collective: every rank must ask for it."""
        if self._grid is None:
            from deepspeed.runtime.pipe.topology import PipelineParallelGrid

            if not dist.is_initialized():
                raise RuntimeError("Topology.grid needs torch.distributed initialised")
            self._grid = PipelineParallelGrid(topology=self.ds_topology())
            assert self._grid.get_data_parallel_rank() == self.dp_rank
            assert self._grid.get_slice_parallel_rank() == self.tp_rank
            assert self._grid.get_stage_id() == self.stage
        return self._grid

    def use_grid(self, grid) -> None:
        """Adopt the grid a DeepSpeed PipelineModule built for ``ds_topology()`` (same groups, not twice)."""
        if (grid.get_stage_id(), grid.get_data_parallel_rank(), grid.get_slice_parallel_rank()) != self.coordinates():
            raise ValueError("the pipeline's grid does not match this topology's rank layout")
        self._grid = grid

    @property
    def mpu(self):
        """The ``mpu`` for deepspeed.initialize, or None for plain data parallelism."""
        return self.grid if self.is_model_parallel else None

    @property
    def tensor_group(self) -> dist.ProcessGroup | None:
        return self.grid.get_slice_parallel_group() if self.tensor > 1 else None

    @property
    def world_group(self) -> dist.ProcessGroup | None:
        """The group over which the per-step statistics are summed (None: the default world group)."""
        return None
