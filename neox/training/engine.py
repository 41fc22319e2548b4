"""The DeepSpeed engine: optimizer, LR schedule and the DeepSpeed config derived from ours."""

from __future__ import annotations

import copy
from functools import partial
from typing import Any

import torch

from neox.config import ExperimentConfig
from neox.training.schedule import lr_at


class SkippableAdamW(torch.optim.AdamW):
    """AdamW whose next step can be vetoed (a non-finite loss anywhere in the job).

    DeepSpeed's engine reads ``optimizer.overflow`` after ``step()`` and then counts the step as skipped and
    leaves the LR schedule where it was; ZeRO-1/2 detect non-finite gradients by themselves, but a plain
    (ZeRO-0) engine does not, so the trainer sets ``skip_next`` from the all-reduced loss statistics.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.skip_next = False
        self.overflow = False

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch signature
        self.overflow = self.skip_next
        self.skip_next = False
        if self.overflow:
            return None
        return super().step(closure)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only (not on biases, LayerNorm or other vectors), as GPT-NeoX does."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def deepspeed_config(cfg: ExperimentConfig, dp_size: int, device: torch.device) -> dict[str, Any]:
    ds = copy.deepcopy(cfg.deepspeed)
    for key in ("bf16", "fp16"):
        section = ds.get(key)
        if isinstance(section, dict) and section.get("enabled") == "auto":
            # bf16 "where the device supports it": CUDA with bf16 units; on a CPU bf16 matmuls are slow.
            section["enabled"] = bool(key == "bf16" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    micro = cfg.data.micro_batch_sequences
    ds.update(
        train_batch_size=cfg.data.global_batch_sequences,
        train_micro_batch_size_per_gpu=micro,
        gradient_accumulation_steps=cfg.data.global_batch_sequences // (micro * dp_size),
        gradient_clipping=cfg.optimizer.grad_clip,
        steps_per_print=10**9,  # our progress bar and metrics file do the reporting
        wall_clock_breakdown=False,
    )
    ds.setdefault("zero_allow_untested_optimizer", True)  # our AdamW subclass is a plain torch optimizer
    return ds


def build_engine(cfg: ExperimentConfig, model: torch.nn.Module, dp_size: int, device: torch.device, mpu: Any = None):
    """Returns (engine, optimizer, lr_scheduler). ``mpu``: the topology's process groups under tensor
    parallelism (a pipeline module brings its own); a PipelineModule gives a PipelineEngine."""
    import deepspeed

    opt_cfg = cfg.optimizer
    optimizer = SkippableAdamW(param_groups(model, opt_cfg.weight_decay), lr=opt_cfg.lr, betas=tuple(opt_cfg.betas),
                               eps=opt_cfg.eps, fused=device.type == "cuda")
    schedule = partial(lr_at, lr=opt_cfg.lr, min_lr=opt_cfg.min_lr, warmup_steps=cfg.schedule.resolved_warmup_steps,
                       total_steps=cfg.schedule.train_steps, decay=cfg.schedule.decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule(step) / opt_cfg.lr)
    engine, _, _, _ = deepspeed.initialize(model=model.to(device), optimizer=optimizer, lr_scheduler=scheduler,
                                           config=deepspeed_config(cfg, dp_size, device), mpu=mpu)
    return engine, optimizer, scheduler
