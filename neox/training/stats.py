"""Per-step statistics: summed over micro-batches locally, then over the whole job in ONE all-reduce.

The packed tensor holds, in order: per-domain loss sums, token counts, sample counts, the non-finite
flag, (DoReMi) reference-loss and excess-loss sums, (DoGE / AC-ODM) the probe layers' alignment
statistics. Everything in it is a sum, so data-parallel replicas, tensor-parallel shards (each probe shard
fills its slice; only tensor rank 0 adds the losses) and pipeline stages (the last stage adds the losses,
each stage its probes' statistics in the whole model's layout) contribute partial sums, and one SUM
all-reduce over the whole job combines them (docs/design.md, "Statistics").
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist

from neox.model.gpt_neox import add_domain_sums, domain_sums_numel

if TYPE_CHECKING:
    from acodm.alignment import GradientAlignment


@dataclass
class ReducedStats:
    loss_sum: np.ndarray  # (K,) float64
    token_count: np.ndarray  # (K,)
    sample_count: np.ndarray  # (K,)
    nonfinite: bool
    ref_loss_sum: np.ndarray | None
    excess_loss_sum: np.ndarray | None
    gram: np.ndarray | None  # (K, K)
    # (K, K) <g_i at this step, g_j at the previous step>: its diagonal estimates ||g_i||^2 without the
    # sampling-noise bias of the same-step self term (the two steps' samples are independent). None on
    # the first step and without alignment statistics.
    gram_cross: np.ndarray | None = None

    def training_domains(self, num_domains: int) -> dict[str, np.ndarray | None]:
        """Every per-domain field (all but ``nonfinite``) cut to the first ``num_domains`` domains, the
        training ones (target-only domains follow them): the keyword arguments of acodm's ``StepStats``."""
        K = num_domains
        out: dict[str, np.ndarray | None] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "nonfinite":
                out[f.name] = None if value is None else value[:K, :K] if value.ndim == 2 else value[:K]
        return out

    @property
    def mean_loss(self) -> float:
        total = self.token_count.sum()
        return float(self.loss_sum.sum() / total) if total else float("nan")


class StepStatistics:
    def __init__(self, num_domains: int, device: torch.device, alignment: "GradientAlignment | None" = None,
                 reference_model: torch.nn.Module | None = None) -> None:
        self.num_domains = num_domains
        self.device = device
        self.alignment = alignment
        self.reference_model = reference_model
        width = domain_sums_numel(num_domains) + (2 * num_domains if reference_model is not None else 0)
        self._local = torch.zeros(width, dtype=torch.float64, device=device)
        self._previous: tuple[torch.Tensor, np.ndarray] | None = None  # last step's reduced alignment + tokens

    def reset(self) -> None:
        self._local.zero_()
        if self.alignment is not None:
            self.alignment.reset()

    def begin_micro_batch(self, domain_B: torch.Tensor, seq_len_tokens: int, grad_scale: float) -> None:
        if self.alignment is not None:
            self.alignment.begin_micro_batch(domain_B[:, None].expand(-1, seq_len_tokens), grad_scale)

    @torch.no_grad()
    def add_losses(self, token_loss_BT: torch.Tensor, domain_B: torch.Tensor, inputs_BT: torch.Tensor,
                   labels_BT: torch.Tensor) -> None:
        K = self.num_domains
        local = self._local
        add_domain_sums(local, K, token_loss_BT, domain_B)
        if self.reference_model is not None:
            from neox.model.gpt_neox import per_token_loss

            ref_BT = per_token_loss(self.reference_model(inputs_BT), labels_BT).double()
            local[3 * K + 1:4 * K + 1].index_add_(0, domain_B, ref_BT.sum(dim=1))
            excess_B = (token_loss_BT.double() - ref_BT).clamp_min(0).sum(dim=1)
            local[4 * K + 1:5 * K + 1].index_add_(0, domain_B, excess_B)

    def reduce(self, group: dist.ProcessGroup | None = None) -> ReducedStats:
        parts = [self._local]
        if self.alignment is not None:
            parts.append(self.alignment.packed().to(self.device, torch.float64))
        packed = torch.cat(parts)
        if dist.is_initialized() and dist.get_world_size(group) > 1:
            dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
        K = self.num_domains
        head = packed[: self._local.numel()].cpu().numpy()
        token_count = head[K:2 * K].copy()
        gram = cross = None
        if self.alignment is not None:
            tail = packed[self._local.numel():]
            gram = self.alignment.gram(tail, token_count)
            if self._previous is not None:
                cross = self.alignment.cross_gram(tail, token_count, *self._previous)
            self._previous = (tail.detach().to("cpu", torch.float32).clone(), token_count.copy())
        ref = excess = None
        if self.reference_model is not None:
            ref, excess = head[3 * K + 1:4 * K + 1].copy(), head[4 * K + 1:5 * K + 1].copy()
        return ReducedStats(loss_sum=head[0:K].copy(), token_count=token_count, sample_count=head[2 * K:3 * K].copy(),
                            nonfinite=bool(head[3 * K] > 0), ref_loss_sum=ref, excess_loss_sum=excess, gram=gram,
                            gram_cross=cross)

    def state_dict(self) -> dict:
        """The previous step's reduced alignment statistics (for ``gram_cross`` after a resume)."""
        if self._previous is None:
            return {}
        return {"previous_alignment": self._previous[0], "previous_token_count": self._previous[1]}

    def load_state_dict(self, sd: dict) -> None:
        self._previous = None
        if sd.get("previous_alignment") is not None:
            self._previous = (torch.as_tensor(sd["previous_alignment"], dtype=torch.float32),
                              np.asarray(sd["previous_token_count"], dtype=np.float64))
