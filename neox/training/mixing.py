"""The run's mixing component (``Mixing``) and how it is built from the experiment config.

The mixer says what it needs (``Mixer.needs``); nothing else is collected: no probe hooks for static, ODM
or a frozen actor, no reference model unless DoReMi asks for one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

from acodm.mixers import build_mixer
from acodm.mixers.base import Mixer, MixerNeeds, StepStats
from neox.config import ExperimentConfig
from neox.errors import ConfigError
from neox.training.stats import ReducedStats, StepStatistics

if TYPE_CHECKING:
    from neox.parallel.topology import Topology


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
            from neox.training.pipeline_alignment import PipelineAlignment

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


class Mixing:
    """Everything mixing keeps across steps: the mixer, the step statistics it needs, the probe norms AC-ODM's
    state reads and the weights in force (docs/design.md, "The mixing component").

    The trainer talks to it through three calls: ``reduce`` after a step's last backward (before the update),
    ``observe`` after the update with the step's reduced statistics, and ``weights``, the weights the next
    batches are drawn with. ``state_dict`` / ``load_state_dict`` hold all of its state.
    """

    def __init__(self, cfg: ExperimentConfig, mixer: Mixer, statistics: StepStatistics, module: torch.nn.Module,
                 topology: "Topology", domains: list[str], val_domains: list[str], device: torch.device) -> None:
        """``module`` is the engine's module (the probe norms are read from it); ``val_domains`` are the training
        domains followed by the target-only ones, the order of the statistics."""
        self.cfg = cfg
        self.mixer = mixer
        self.statistics = statistics
        self.module = module
        self.topology = topology
        self.domains = domains
        self.val_domains = val_domains
        self.device = device
        self._weights = np.asarray(mixer.weights(), dtype=np.float64)
        self._state_probes: list[str] | None = None  # names of the probe matrices whose norms feed AC-ODM's state
        self._step_probe_norms: np.ndarray | None = None  # read before this step's optimizer update

    @property
    def weights(self) -> np.ndarray:
        """(K,) the weights in force: the batches are drawn with them until ``observe`` replaces them, every
        ``mixing.update_interval_steps`` steps (a new array then; the old one is left as it was)."""
        return self._weights

    def reduce(self, group: dist.ProcessGroup | None) -> ReducedStats:
        """After the step's last backward, before the optimizer update: the job's statistics in one all-reduce,
        and the probe norms, which AC-ODM's state reads before the update as the reference does (DANG-ai/AC-ODM
        megatron/training.py L880 then L897): at the weights the step's gradients were taken at."""
        reduced = self.statistics.reduce(group)
        self._step_probe_norms = self.probe_norms() if self.mixer.needs.probe_norms else None
        return reduced

    def observe(self, step: int, stats: ReducedStats, lr: float) -> dict[str, float]:
        """The mixer observes step ``step`` on rank 0 (the metrics it returns are rank 0's); every
        ``mixing.update_interval_steps`` steps its weights are broadcast and become the weights in force.
        A step with a non-finite loss was not applied and is never shown to the mixer."""
        metrics: dict[str, float] = {}
        weights = np.zeros(len(self.domains), dtype=np.float64)
        if self.topology.is_main:
            if stats.nonfinite:
                metrics["mixer/skipped_nonfinite"] = 1.0
            else:
                metrics.update(self.mixer.observe(self._step_stats(step, stats, self._step_probe_norms, lr)))
            weights = np.asarray(self.mixer.weights(), dtype=np.float64)
        if step % self.cfg.mixing.update_interval_steps == 0:
            self._weights = np.asarray(broadcast_weights(weights, self.device), dtype=np.float64)
        return metrics

    def _step_stats(self, step: int, stats: ReducedStats, norms: np.ndarray | None, lr: float) -> StepStats:
        """What the mixer sees of a step: the training domains' statistics, the weights the batch was drawn
        with (``self.weights``, replaced only after this) and each domain's alignment with the targets."""
        K, targets = len(self.domains), self.cfg.mixing.target_domains
        target = mask = None
        if stats.gram is not None and targets:
            # Statistics index training domains then probed target-only ones: the target direction is the
            # sum of the targets' gradients wherever they sit.
            target = stats.gram[:K, [self.val_domains.index(d) for d in targets]].mean(axis=1)
            mask = np.array([d in targets for d in self.domains], dtype=np.float64)
        return StepStats(step=step, total_steps=self.cfg.schedule.train_steps, probe_norms=norms,
                         weights=self._weights.copy(), target_alignment=target,
                         num_targets=len(targets or []) or None, target_mask=mask, lr=lr,
                         **stats.training_domains(K))

    def probe_norms(self) -> np.ndarray:
        """Norms of the probe matrices that feed AC-ODM's state. A collective under pipeline or tensor
        parallelism (each probe's squared norm is summed over the stages and shards holding it)."""
        from acodm.alignment import default_state_probes, probe_weight_norms

        module, topo = self.module, self.topology
        if self._state_probes is None:
            # AC-ODM's state spec fixes how many probe matrices it reads (acodm.num_probe_layers, or the
            # exported actor's count for a frozen run). Names are the whole model's.
            from neox.model.gpt_neox import build_model

            self._state_probes = default_state_probes(build_model(self.cfg.model, device="meta"),
                                                      count=self.mixer.spec.num_probes)
        if not topo.is_model_parallel:
            return probe_weight_norms(module, self._state_probes).double().cpu().numpy()
        if topo.pipe > 1:
            from neox.model.pipeline_checkpoint import hf_named_view

            module = hf_named_view(module, self.cfg.model.num_layers)
        local = {n for n, _ in module.named_modules()}
        sq = torch.zeros(len(self._state_probes), dtype=torch.float64, device=self.device)
        if topo.dp_rank == 0:  # replicas hold the same weights; one of them counts
            for i, name in enumerate(self._state_probes):
                if name in local:  # this stage holds it (a TP shard holds a slice of every probe)
                    sq[i] = probe_weight_norms(module, [name], squared=True)[0].double()
        dist.all_reduce(sq, op=dist.ReduceOp.SUM)
        return sq.sqrt().cpu().numpy()

    def state_dict(self) -> dict[str, Any]:
        """The weights in force, the mixer's state and the statistics' (the previous step's alignment, for the
        cross-step Gram). The step's probe norms are not kept: each step reads its own before it is observed."""
        return {"weights": self._weights.tolist(), "mixer": self.mixer.state_dict(),
                "statistics": self.statistics.state_dict()}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """``statistics`` may be None: a checkpoint written before the cross-step Gram starts it anew."""
        self._weights = np.asarray(sd["weights"], dtype=np.float64)
        self.mixer.load_state_dict(sd["mixer"])
        if sd.get("statistics") is not None:
            self.statistics.load_state_dict(sd["statistics"])


def broadcast_weights(weights: np.ndarray, device: torch.device) -> np.ndarray:
    """Rank 0's K weights to every rank (the plan must agree everywhere)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return weights
    t = torch.as_tensor(weights, dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return t.cpu().numpy()
