"""The pipeline-parallel training step (``parallel.pipe > 1``) and the one patch of DeepSpeed's internals it needs.

Under ``PipelineEngine.train_batch`` forward, backward and the optimizer step happen in one call. Two hooks keep
the step's math the same as without a pipeline: the stage module tells the probes each micro-batch's domain ids
before its forward (``micro_batch_hook``), and the job's statistics are all-reduced, and a non-finite step
vetoed, right before the optimizer step, after the last backward of every stage (``wrap_optimizer_step``: the
patch, checked against the DeepSpeed releases of ``neox.training.ds_compat``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch

from neox.training.stats import ReducedStats

if TYPE_CHECKING:
    from neox.model.domain_loss import DomainLoss
    from neox.parallel.topology import Topology
    from neox.training.engine import SkippableAdamW
    from neox.training.mixing import Mixing


def wrap_optimizer_step(engine: Any, before: Callable[[], None]) -> None:
    """Run ``before()`` right before the pipeline engine's optimizer step.

    DeepSpeed 0.19.8's ``PipelineEngine`` runs each schedule instruction through ``self._INSTRUCTION_MAP``; an
    instance-level copy of the map with the optimizer-step entry wrapped changes no class and no other engine.
    ``PipelineStep.run`` fails with a clear message if a DeepSpeed release stops calling it.
    """
    from deepspeed.runtime.pipe import schedule

    instructions = dict(type(engine)._INSTRUCTION_MAP)
    optimizer_step = instructions[schedule.OptimizerStep]

    def before_then_step(eng: Any, **kwargs: Any) -> Any:
        before()
        return optimizer_step(eng, **kwargs)

    instructions[schedule.OptimizerStep] = before_then_step
    engine._INSTRUCTION_MAP = instructions


def pipeline_items(micro_batches: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> list:
    """``((inputs_BS, domain_B), (labels_BS, domain_B))`` per micro-batch: the first stage reads the inputs, the
    last the labels; the domain ids travel with both."""
    items = []
    for tokens_BS1, domain_B in micro_batches:
        tokens_BS1, domain_B = tokens_BS1.to(device), domain_B.to(device)
        items.append(((tokens_BS1[:, :-1], domain_B), (tokens_BS1[:, 1:], domain_B)))
    return items


def loss_scale(engine: Any) -> float:
    """fp16's dynamic loss scale (the backward's gradients carry it), else 1."""
    return float(engine.optimizer.cur_scale) if engine.fp16_enabled() else 1.0


class PipelineStep:
    """One training step of a pipeline engine, feeding the mixing component's statistics on every stage."""

    def __init__(self, engine: Any, mixing: "Mixing", topology: "Topology", optimizer: "SkippableAdamW",
                 domain_loss: "DomainLoss", device: torch.device) -> None:
        self.engine, self.mixing, self.topology = engine, mixing, topology
        self.optimizer, self.domain_loss, self.device = optimizer, domain_loss, device
        self._reduced: ReducedStats | None = None
        engine.module.micro_batch_hook = self._before_micro_batch
        # The loss function was built with the model, before the statistics existed: connect it now.
        domain_loss.on_token_loss = self._on_token_loss
        wrap_optimizer_step(engine, self._reduce)

    def run(self, micro_batches: list[tuple[torch.Tensor, torch.Tensor]]) -> ReducedStats:
        """One ``engine.train_batch``; the statistics are reduced inside, right before the optimizer step."""
        self._reduced = None
        self.engine.train_batch(iter(pipeline_items(micro_batches, self.device)))
        if self._reduced is None:
            raise RuntimeError("the pipeline engine finished train_batch without its optimizer-step hook; "
                               "the DeepSpeed version changed how PipelineEngine runs its schedule")
        return self._reduced

    def _reduce(self) -> None:
        self._reduced = self.mixing.reduce(self.topology.world_group)
        self.optimizer.skip_next = self._reduced.nonfinite

    def _before_micro_batch(self, domain_B: torch.Tensor, seq_len_tokens: int) -> None:
        grad_accum = self.engine.gradient_accumulation_steps()
        self.mixing.statistics.begin_micro_batch(domain_B, seq_len_tokens, grad_scale=domain_B.shape[0]
                                                 * seq_len_tokens * grad_accum / loss_scale(self.engine))

    def _on_token_loss(self, token_loss_BT: torch.Tensor, domain_B: torch.Tensor, labels_BT: torch.Tensor) -> None:
        # Evaluation reads DomainLoss.totals() instead; tensor-parallel ranks hold the same losses.
        if self.engine.module.training and self.topology.counts_losses:
            self.mixing.statistics.add_losses(token_loss_BT, domain_B, None, labels_BT)
