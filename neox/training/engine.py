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

    DeepSpeed's engine reads ``overflow`` on the optimizer it holds after ``step()`` and then counts the step as
    skipped and leaves the LR schedule where it was. The trainer sets ``skip_next`` from the all-reduced loss
    statistics. Under a plain (ZeRO-0) engine this is the optimizer the engine holds; under ZeRO or bf16 the
    engine holds DeepSpeed's wrapper around it, and ``forward_veto`` makes the wrapper report the veto too.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.skip_next = False
        self.overflow = False

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch signature
        # skip_next is not consumed here: DeepSpeed's ZeRO optimizer calls step() once per parameter group, and
        # every group of a vetoed step must be skipped. The trainer sets it before every optimizer step.
        self.overflow = self.skip_next
        if self.overflow:
            return None
        return super().step(closure)


def forward_veto(wrapper: Any, optimizer: SkippableAdamW) -> None:
    """Make DeepSpeed's optimizer wrapper (ZeRO, BF16_Optimizer, FP16) report a vetoed step as an overflow.

    The engine reads the wrapper's ``overflow``, not ours, to decide whether the LR schedule advances, and
    the wrapper's own check may miss a veto: DeepSpeed's ZeRO optimizer does not look at bf16 gradients
    unless ``bf16.check_grad_overflow`` is set, and a veto may come from a non-finite loss whose gradients are
    finite. The wrapper still runs its step (our optimizer skips the update; the wrapper clears the
    gradients), then reports the overflow, so a skipped step changes neither the weights nor the LR.
    """
    if wrapper is optimizer:
        return
    step = wrapper.step

    def step_or_veto(*args: Any, **kwargs: Any) -> Any:
        out = step(*args, **kwargs)
        if optimizer.skip_next:
            wrapper.overflow = True
        return out

    # DeepSpeed 0.19.8's engine calls self.optimizer.step() in _take_model_step; an instance attribute wraps
    # it without subclassing each wrapper. tests/test_trainer.py fails if a skipped step moves the LR.
    wrapper.step = step_or_veto


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
    bf16 = ds.get("bf16")
    zero_stage = ds.get("zero_optimization", {}).get("stage", 0)
    if isinstance(bf16, dict) and bf16.get("enabled") and zero_stage >= 1:
        # Micro-batch gradients summed in bf16 lose the small ones (8 mantissa bits); fp32 accumulation gives
        # DeepSpeed's BF16_Optimizer under ZeRO-1. DeepSpeed refuses fp32 accumulation of bf16 without ZeRO.
        ds.setdefault("data_types", {}).setdefault("grad_accum_dtype", "fp32")
        # Skip the step on non-finite bf16 gradients (DeepSpeed's ZeRO optimizer does not look unless asked).
        bf16.setdefault("check_grad_overflow", True)
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
    forward_veto(engine.optimizer, optimizer)
    return engine, optimizer, scheduler
