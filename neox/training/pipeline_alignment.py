"""Gradient-alignment statistics on a pipeline stage (docs/design.md, "Statistics").

`stage_alignment` builds a GradientAlignment over this stage's probes under HF names, so patterns, negative layer
indices and sketch matrices are the same as in the unsharded model, and `PipelineAlignment` places its
statistics into a buffer laid out for the whole model, so one all-reduce over the job sums every stage's (and
data-parallel rank's) share.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from neox.model.config import ModelConfig
from neox.model.gpt_neox import build_model
from neox.model.pipeline_checkpoint import hf_named_view


def global_probe_names(cfg: ModelConfig, pattern: str | list[str]) -> list[str]:
    """HF names (model order) of the probe modules of the WHOLE model; raises if the pattern matches none."""
    from acodm.alignment import resolve_probes

    return resolve_probes(build_model(cfg, device="meta"), pattern, cfg.num_layers)


def stage_probe_names(module: nn.Module, cfg: ModelConfig, pattern: str | list[str]) -> list[str]:
    """HF names of the probes this stage holds (possibly none). Pipeline names are "{i+1}.mlp...." for HF's
    "gpt_neox.layers.{i}.mlp...."; the pattern is matched against HF names with L = cfg.num_layers."""
    local = {n for n, _ in hf_named_view(module, cfg.num_layers).named_modules()}
    return [n for n in global_probe_names(cfg, pattern) if n in local]


def stage_alignment(module: nn.Module, cfg: ModelConfig, num_domains: int, align_cfg: Any,
                    device: torch.device | str | None = None):
    """GradientAlignment over this stage's probes (HF names, so sketch R matrices equal the unsharded
    model's), or None when the stage holds none. Pair it with ``module.micro_batch_hook``."""
    import dataclasses

    from acodm.alignment import GradientAlignment

    names = stage_probe_names(module, cfg, align_cfg.probe_pattern)
    if not names:
        return None
    local_cfg = dataclasses.replace(align_cfg, probe_pattern=names, num_layers=cfg.num_layers)
    return GradientAlignment(hf_named_view(module, cfg.num_layers), num_domains, local_cfg, device=device)


class PipelineAlignment:
    """This stage's share of the WHOLE model's alignment statistics (docs/design.md, "Statistics").

    ``packed()`` places the stage's probe statistics in a zero buffer laid out like the unsharded model's
    ``GradientAlignment.packed()`` (probe order of ``global_probe_names``); summed over the job by one
    all-reduce it equals the unsharded statistics (summed over data-parallel ranks), and ``gram`` reads
    that layout. A stage that holds no probe contributes zeros. Offers what the trainer's statistics use
    of a GradientAlignment: begin_micro_batch, reset, packed, packed_numel, gram.
    """

    def __init__(self, module: nn.Module, cfg: ModelConfig, num_domains: int, align_cfg: Any,
                 device: torch.device | str | None = None):
        meta = dict(build_model(cfg, device="meta").named_modules())
        self.num_domains = num_domains
        self.probe_names = global_probe_names(cfg, align_cfg.probe_pattern)
        numels = []
        for n in self.probe_names:
            out_f, in_f = meta[n].weight.shape
            per = out_f * in_f if align_cfg.mode == "exact" else align_cfg.sketch_out * align_cfg.sketch_in
            numels.append(num_domains * per)
        self.block_numels = numels
        self._offsets = dict(zip(self.probe_names, [sum(numels[:i]) for i in range(len(numels))]))
        self.local = stage_alignment(module, cfg, num_domains, align_cfg, device=device)
        self.device = self.local.device if self.local is not None else torch.device(device or "cpu")

    def begin_micro_batch(self, domain_BT: torch.Tensor, grad_scale: float) -> None:
        if self.local is not None:
            self.local.begin_micro_batch(domain_BT, grad_scale)

    def reset(self) -> None:
        if self.local is not None:
            self.local.reset()

    def packed_numel(self) -> int:
        return sum(self.block_numels)

    def packed(self) -> torch.Tensor:
        full = torch.zeros(self.packed_numel(), dtype=torch.float32, device=self.device)
        if self.local is None:
            return full
        local, start = self.local.packed(), 0
        for n in self.local.probe_names:
            if n not in self._offsets:
                raise ValueError(f"probe {n} of this stage is not among the model's probes {self.probe_names}")
            size = self.block_numels[self.probe_names.index(n)]
            full[self._offsets[n]:self._offsets[n] + size] = local[start:start + size]
            start += size
        assert start == local.numel(), (start, local.numel())
        return full

    def gram(self, packed: torch.Tensor, token_count_K: Any):
        from acodm.alignment import packed_gram

        return packed_gram(packed, token_count_K, self.num_domains, self.block_numels)

    def cross_gram(self, packed: torch.Tensor, token_count_K: Any, other: torch.Tensor, other_count_K: Any):
        from acodm.alignment import packed_cross_gram

        return packed_cross_gram(packed, token_count_K, other, other_count_K, self.num_domains, self.block_numels)
