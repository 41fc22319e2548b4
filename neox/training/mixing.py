"""Builds the run's mixer and the statistics it needs from the experiment config.

The mixer says what it needs (``Mixer.needs``); nothing else is collected: no probe hooks for static, ODM
or a frozen actor, no reference model unless DoReMi asks for one.
"""

from __future__ import annotations

from typing import Any

import torch

from acodm.mixers import build_mixer
from acodm.mixers.base import Mixer, MixerNeeds
from neox.config import ExperimentConfig
from neox.errors import ConfigError
from neox.training.stats import StepStatistics


def _natural(cfg: ExperimentConfig, domains: list[str], what: str) -> dict[str, float]:
    ref = cfg.data.reference_weights
    if not ref:
        raise ConfigError(f"{what} asks for the natural weights but data.reference_weights is not set; set it "
                          f"(e.g. include configs/data/pile.yml) or give the weights explicitly")
    missing = [d for d in domains if d not in ref]
    if missing:
        raise ConfigError(f"data.reference_weights has no weight for domain(s) {missing}; add them")
    return {d: float(ref[d]) for d in domains}


def mixer_params(cfg: ExperimentConfig, domains: list[str], manifest: dict[str, Any]) -> dict[str, Any]:
    """The chosen method's parameters with the run-level references resolved."""
    method = cfg.mixing.method
    params = cfg.mixing.params
    params.pop("reference", None)  # DoReMi's reference model is the trainer's business, not the mixer's
    if params.get("initial_weights") == "natural":
        params["initial_weights"] = _natural(cfg, domains, f"mixing.{method}.initial_weights")
    if method in ("acodm", "acodm_frozen") and "floor" not in params and cfg.data.min_samples_per_domain > 0:
        # The batch holds at least min_samples of every domain: that is the floor the actor really acts
        # above, so its weights map to the batch's realised shares.
        params["floor"] = cfg.data.min_samples_per_domain / cfg.data.global_batch_sequences
    if method == "doremi":
        params.setdefault("vocab_size", cfg.model.vocab_size)  # the initial excess loss is ln|V|
    if method == "static":
        kind = params.get("kind", "uniform")
        if kind == "natural" and "weights" not in params:
            params["weights"] = _natural(cfg, domains, "mixing.static.kind=natural")
        if kind == "temperature" and "domain_sizes" not in params:
            tokens = manifest["splits"][cfg.data.train_split]
            params["domain_sizes"] = {d: float(tokens[d]["tokens"]) for d in domains}
    return params


def build_run_mixer(cfg: ExperimentConfig, domains: list[str], manifest: dict[str, Any]) -> Mixer:
    return build_mixer(cfg.mixing.method, domains, total_steps=cfg.schedule.train_steps, seed=cfg.seed,
                       **mixer_params(cfg, domains, manifest))


def build_statistics(cfg: ExperimentConfig, needs: MixerNeeds, model: torch.nn.Module, num_domains: int,
                     device: torch.device) -> StepStatistics:
    """``model`` is the engine's module: the whole model, this rank's tensor-parallel shard (the probes
    know their slice) or this rank's pipeline stage (statistics placed in the whole model's layout)."""
    alignment = reference = None
    if needs.alignment:
        from acodm.alignment import GradientAlignment

        align_cfg = cfg.mixing.alignment.build()
        if cfg.parallel.pipe > 1:
            from neox.model.pipeline import PipelineAlignment

            alignment = PipelineAlignment(model, cfg.model, num_domains, align_cfg, device=device)
        else:
            alignment = GradientAlignment(model, num_domains, align_cfg, device=device)
    if needs.reference_losses:
        path = cfg.mixing.doremi.get("reference")
        if not path:
            raise ConfigError("mixing.method=doremi needs mixing.doremi.reference: a run or checkpoint directory "
                              "of a model trained on the reference weights (e.g. a static-mixture run)")
        from neox.training.checkpoint import load_model

        reference = load_model(path, device)
        if reference.cfg.padded_vocab_size != cfg.model.padded_vocab_size:
            raise ConfigError(f"the DoReMi reference model at {path} has vocabulary {reference.cfg.padded_vocab_size}, "
                              f"this run {cfg.model.padded_vocab_size}; train the reference on the same tokenizer")
        reference.requires_grad_(False)
    return StepStatistics(num_domains, device, alignment=alignment, reference_model=reference)
