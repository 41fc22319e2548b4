"""Pipeline-parallel GPT-NeoX: our layer classes as DeepSpeed LayerSpecs (docs/design.md, "Parallel layouts").

The spec list is [embedding, transformer layer 0 .. L-1, final], so global transformer layer i is spec
index i + 1, and on a stage the `PipelineModule` names it "{i+1}" ("3.mlp.dense_4h_to_h" is HF's
"gpt_neox.layers.2.mlp.dense_4h_to_h"). What travels:

- data iterator (first AND last stage read it): ((input_ids_BT, domain_B), (labels_BT, domain_B));
- between stages: (hidden_BTC, domain_B) -- domain_B is an integer tensor, so DeepSpeed sends no
  gradient for it, and every stage, not only the last, knows the domain of each sequence;
- last stage: `DomainLoss(logits, (labels_BT, domain_B))` returns the mean token loss (a single tensor, as
  PipelineEngine wants) and accumulates per-domain loss sums / token counts / sequence counts, read
  after `engine.train_batch()` with `totals()` and cleared with `reset()`.

Gradient alignment on a stage: `micro_batch_hook` on the module is called with (domain_B, seq_len_tokens)
before every forward of that stage (1F1B interleaving is fine: the hooks bind the domain ids to the forward
they precede); `stage_alignment` builds a GradientAlignment over this stage's probes under HF names, so
patterns, negative layer indices and sketch matrices are the same as in the unsharded model, and
`PipelineAlignment` places its statistics into a buffer laid out for the whole model, so one all-reduce
over the job sums every stage's (and data-parallel rank's) share.

Initialisation: spec index s is initialised with `init_weights` under the RNG seed (seed, s), so the
weights do not depend on the number of stages or the partition (they are not those of `build_model` under
torch.manual_seed(seed); load HF weights with `load_hf_state_dict` to start from a given model).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from neox.model.config import ModelConfig
from neox.model.gpt_neox import (
    EmbeddingLayer,
    FinalLayer,
    TransformerLayer,
    add_domain_sums,
    build_model,
    domain_sums_numel,
    init_weights,
    per_token_loss,
)

__all__ = [
    "DomainLoss",
    "EmbeddingPipe",
    "FinalPipe",
    "PipelineAlignment",
    "TransformerPipe",
    "build_pipeline_module",
    "global_probe_names",
    "hf_named_view",
    "hf_to_pipeline_layer_state",
    "load_hf_state_dict",
    "pipeline_to_hf_state_dict",
    "read_layer_checkpoints",
    "spec_index_of_layer",
    "stage_alignment",
    "stage_probe_names",
]

PARTITION_METHODS = ("parameters", "uniform")
MicroBatchHook = Callable[[torch.Tensor, int], None]


def _seeded_init(module: nn.Module, cfg: ModelConfig, seed: int, spec_index: int) -> None:
    # A generator per layer, independent of the stage layout; fork_rng leaves the caller's RNG untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1_000_003 + spec_index)
        init_weights(module, cfg)


class EmbeddingPipe(EmbeddingLayer):
    """(input_ids_BT, domain_B) -> (hidden_BTC, domain_B)."""

    def __init__(self, cfg: ModelConfig, seed: int = 0, spec_index: int = 0):
        super().__init__(cfg)
        _seeded_init(self, cfg, seed, spec_index)

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        input_ids_BT, domain_B = inputs
        return super().forward(input_ids_BT), domain_B


class TransformerPipe(TransformerLayer):
    """(hidden_BTC, domain_B) -> (hidden_BTC, domain_B)."""

    def __init__(self, cfg: ModelConfig, seed: int = 0, spec_index: int = 1):
        super().__init__(cfg)
        _seeded_init(self, cfg, seed, spec_index)

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x_BTC, domain_B = inputs
        return super().forward(x_BTC), domain_B


class FinalPipe(FinalLayer):
    """(hidden_BTC, domain_B) -> logits_BTV (the domain ids reach the loss through the labels)."""

    def __init__(self, cfg: ModelConfig, seed: int = 0, spec_index: int = 1):
        super().__init__(cfg)
        _seeded_init(self, cfg, seed, spec_index)

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x_BTC, _ = inputs
        return super().forward(x_BTC)


class DomainLoss:
    """Pipeline loss_fn: mean next-token loss for backward, per-domain sums on the side.

    Accumulates in fp64 on the logits' device: loss_sum_K, token_count_K, sequence_count_K and a
    non-finite flag (the same quantities the trainer's step statistics keep). ``on_token_loss``, if
    given, is called with (token_loss_BT detached, domain_B, labels_BT) for every micro-batch, e.g. to
    feed the trainer's statistics object directly. Evaluation forwards (``engine.eval_batch``) also pass
    through here: ``reset()`` before the training step.
    """

    def __init__(self, num_domains: int,
                 on_token_loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
                 token_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = per_token_loss):
        if num_domains < 1:
            raise ValueError(f"num_domains must be >= 1, got {num_domains}")
        self.num_domains = num_domains
        self.on_token_loss = on_token_loss
        self.token_loss = token_loss  # (logits, labels) -> (B, T); vocab-parallel under tensor parallelism
        self._sums: torch.Tensor | None = None  # (3K + 1,) fp64: loss, tokens, sequences, non-finite

    def __call__(self, logits_BTV: torch.Tensor, labels: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        if not (isinstance(labels, (tuple, list)) and len(labels) == 2):
            raise ValueError("pipeline labels must be the tuple (labels_BT, domain_B); make the data iterator "
                             "yield ((input_ids_BT, domain_B), (labels_BT, domain_B))")
        labels_BT, domain_B = labels
        token_loss_BT = self.token_loss(logits_BTV, labels_BT)  # (B, T) fp32
        self._accumulate(token_loss_BT.detach(), domain_B)
        if self.on_token_loss is not None:
            self.on_token_loss(token_loss_BT.detach(), domain_B, labels_BT)
        return token_loss_BT.mean()

    @torch.no_grad()
    def _accumulate(self, token_loss_BT: torch.Tensor, domain_B: torch.Tensor) -> None:
        K = self.num_domains
        if self._sums is None:
            self._sums = torch.zeros(domain_sums_numel(K), dtype=torch.float64, device=token_loss_BT.device)
        domain_B = domain_B.to(token_loss_BT.device, torch.long)
        if int(domain_B.min()) < 0 or int(domain_B.max()) >= K:
            raise ValueError(f"domain ids must lie in [0, {K}), got {domain_B.tolist()}")
        add_domain_sums(self._sums, K, token_loss_BT, domain_B)

    def totals(self) -> dict[str, torch.Tensor]:
        """Per-domain sums since the last reset (zeros if no micro-batch passed): loss_sum (K,),
        token_count (K,), sequence_count (K,) fp64 and nonfinite (scalar count of micro-batches)."""
        K = self.num_domains
        s = self._sums if self._sums is not None else torch.zeros(domain_sums_numel(K), dtype=torch.float64)
        return {"loss_sum": s[0:K].clone(), "token_count": s[K:2 * K].clone(),
                "sequence_count": s[2 * K:3 * K].clone(), "nonfinite": s[3 * K].clone()}

    def reset(self) -> None:
        if self._sums is not None:
            self._sums.zero_()


def _pipeline_module_class():
    from deepspeed.pipe import PipelineModule

    class GPTNeoXPipeline(PipelineModule):
        """PipelineModule that calls ``micro_batch_hook(domain_B, seq_len_tokens)`` before each stage forward."""

        micro_batch_hook: MicroBatchHook | None = None

        def forward(self, forward_input):
            if self.micro_batch_hook is not None:
                x, domain_B = forward_input
                self.micro_batch_hook(domain_B, int(x.shape[1]))
            return super().forward(forward_input)

    return GPTNeoXPipeline


def __getattr__(name: str):
    # The class derives from DeepSpeed's PipelineModule; built on first use so importing this module
    # does not import deepspeed.
    if name == "GPTNeoXPipeline":
        cls = _pipeline_module_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)


def build_pipeline_module(cfg: ModelConfig, num_stages: int | None = None, topology: Any = None, *,
                          loss_fn: DomainLoss | Callable | None = None, num_domains: int | None = None,
                          partition_method: str = "parameters", seed: int = 1234,
                          activation_checkpoint_interval: int = 0, dynamic_shape: bool = False):
    """GPTNeoXPipeline (a deepspeed.pipe.PipelineModule) holding this rank's stage.

    Give ``num_stages`` (data parallelism = world / num_stages, DeepSpeed's PipeDataParallelTopology over
    the whole world) or a DeepSpeed ``topology`` (e.g. PipeModelDataParallelTopology(num_pp, num_mp,
    num_dp)). ``loss_fn`` defaults to ``DomainLoss(num_domains)``; the module keeps it as ``.loss_fn``.
    ``activation_checkpoint_interval`` N > 0 checkpoints chunks of N spec layers that hold transformer
    layers only (with N > 1 a chunk that includes the embedding or the final layer runs unchecked).
    ``dynamic_shape`` lets micro-batches change shape between calls (DeepSpeed then sends each
    activation's shape ahead of it): needed when evaluation batches differ from training ones.
    torch.distributed must be initialised (deepspeed.init_distributed).
    """
    import torch.distributed as dist

    if partition_method not in PARTITION_METHODS:
        raise ValueError(f"partition_method must be one of {PARTITION_METHODS}, got {partition_method!r}")
    if num_stages is None and topology is None:
        raise ValueError("build_pipeline_module needs num_stages or topology")
    stages = topology.get_dim("pipe") if topology is not None else num_stages
    if stages < 1 or stages > cfg.num_layers + 2:
        raise ValueError(f"parallel.pipe={stages} must be in [1, model.num_layers + 2 = {cfg.num_layers + 2}]")
    if not dist.is_initialized():
        raise RuntimeError("build_pipeline_module needs torch.distributed initialised "
                           "(deepspeed.init_distributed) before the model is built")
    if loss_fn is None:
        if num_domains is None:
            raise ValueError("build_pipeline_module needs loss_fn or num_domains")
        loss_fn = DomainLoss(num_domains)
    from deepspeed.pipe import LayerSpec

    L = cfg.num_layers
    specs = [LayerSpec(EmbeddingPipe, cfg, seed, 0)]
    specs += [LayerSpec(TransformerPipe, cfg, seed, i + 1) for i in range(L)]
    specs.append(LayerSpec(FinalPipe, cfg, seed, L + 1))
    cls = __getattr__("GPTNeoXPipeline")
    return cls(layers=specs, num_stages=None if topology is not None else num_stages, topology=topology,
               loss_fn=loss_fn, partition_method=partition_method,
               activation_checkpoint_interval=activation_checkpoint_interval, dynamic_shape=dynamic_shape,
               # Reentrant checkpointing of a chunk whose inputs need no gradient (the embedding's token
               # ids) would cut the graph: only chunks made entirely of transformer layers are checkpointed.
               checkpointable_layers=[TransformerPipe.__name__])


# --------------------------------------------------------------------------------------------------
# Names: spec index <-> HF
# --------------------------------------------------------------------------------------------------

def spec_index_of_layer(layer: int, num_layers: int) -> int:
    """Spec index (the PipelineModule's module name) of global transformer layer ``layer`` (negative
    counts from the end)."""
    i = layer + num_layers if layer < 0 else layer
    if not 0 <= i < num_layers:
        raise ValueError(f"layer {layer} out of range for num_layers={num_layers}")
    return i + 1


def _hf_prefix(spec_index: int, key: str, num_layers: int) -> str:
    if spec_index == 0:
        return "gpt_neox."
    if 1 <= spec_index <= num_layers:
        return f"gpt_neox.layers.{spec_index - 1}."
    if spec_index == num_layers + 1:
        return "" if key.startswith("lm_head.") else "gpt_neox."
    raise ValueError(f"spec index {spec_index} out of range for num_layers={num_layers} "
                     f"(0 .. {num_layers + 1})")


def pipeline_to_hf_state_dict(layer_states: Mapping[int, Mapping[str, torch.Tensor]],
                              num_layers: int) -> dict[str, torch.Tensor]:
    """{spec index: that layer's state dict (DeepSpeed's layer_XX-model_states.pt)} -> HF-named dict
    (GPTNeoXForCausalLM keys). All num_layers + 2 layers must be present (gather every stage first)."""
    missing = sorted(set(range(num_layers + 2)) - set(layer_states))
    if missing:
        raise ValueError(f"layer states for spec indices {missing} are missing; collect every stage's "
                         f"layer files (0 .. {num_layers + 1}) before converting")
    out: dict[str, torch.Tensor] = {}
    for s in sorted(layer_states):
        for key, value in layer_states[s].items():
            out[_hf_prefix(s, key, num_layers) + key] = value
    return out


def hf_to_pipeline_layer_state(hf_state: Mapping[str, torch.Tensor],
                               num_layers: int) -> dict[int, dict[str, torch.Tensor]]:
    """HF-named state dict -> {spec index: layer-local state dict}; unknown keys raise."""
    out: dict[int, dict[str, torch.Tensor]] = {s: {} for s in range(num_layers + 2)}
    for name, value in hf_state.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue  # HF's non-persistent rotary buffer, not a weight
        if name.startswith("gpt_neox.embed_in."):
            out[0][name[len("gpt_neox."):]] = value
        elif name.startswith("gpt_neox.layers."):
            index, rest = name[len("gpt_neox.layers."):].split(".", 1)
            out[spec_index_of_layer(int(index), num_layers)][rest] = value
        elif name.startswith("gpt_neox.final_layer_norm."):
            out[num_layers + 1][name[len("gpt_neox."):]] = value
        elif name.startswith("lm_head."):
            out[num_layers + 1][name] = value
        else:
            raise ValueError(f"unexpected key {name!r} in the HF state dict (GPTNeoXForCausalLM keys expected)")
    return out


_LAYER_FILE = re.compile(r"^layer_(\d+)(?:-model_(\d+))?-model_states\.pt$")


def read_layer_checkpoints(ckpt_dir: str | os.PathLike,
                           cfg: ModelConfig | None = None) -> dict[int, dict[str, torch.Tensor]]:
    """{spec index: state dict} from the layer_XX[-model_YY]-model_states.pt files that
    PipelineEngine.save_checkpoint writes into ``{save_dir}/{tag}`` (one file per layer and tensor-parallel
    rank; CPU tensors). Tensor-parallel shards (model_01, ...) are joined along the dimension where their
    shape differs from the full model's, which needs ``cfg``. Feed the result to `pipeline_to_hf_state_dict`
    for an HF-named model.safetensors."""
    files: dict[int, dict[int, str]] = {}
    for name in sorted(os.listdir(ckpt_dir)):
        m = _LAYER_FILE.match(name)
        if m:
            files.setdefault(int(m.group(1)), {})[int(m.group(2) or 0)] = os.path.join(ckpt_dir, name)
    if not files:
        raise FileNotFoundError(f"no layer_XX-model_states.pt files in {ckpt_dir}; pass the checkpoint's tag "
                                "directory (save_dir/tag) written by a pipeline-parallel run")
    sharded = any(len(by_rank) > 1 for by_rank in files.values())
    if sharded and cfg is None:
        raise ValueError(f"{ckpt_dir} holds tensor-parallel shards (layer_XX-model_YY files); pass the model "
                         "config so they can be joined")
    full_shapes = None
    if sharded:
        meta = build_model(cfg, device="meta").state_dict()
        full_shapes = {s: {k: v.shape for k, v in sd.items()}
                       for s, sd in hf_to_pipeline_layer_state(meta, cfg.num_layers).items()}
    out: dict[int, dict[str, torch.Tensor]] = {}
    for spec, by_rank in files.items():
        if sorted(by_rank) != list(range(len(by_rank))):
            raise ValueError(f"layer {spec} in {ckpt_dir} has tensor-parallel files {sorted(by_rank)}; some are "
                             "missing (the checkpoint was not fully written)")
        shards = [torch.load(by_rank[r], map_location="cpu", weights_only=True) for r in sorted(by_rank)]
        if len(shards) == 1:
            out[spec] = shards[0]
            continue
        joined = {}
        for key, first in shards[0].items():
            want = full_shapes[spec].get(key)
            dims = [d for d in range(first.ndim) if want is not None and first.shape[d] != want[d]]
            joined[key] = torch.cat([sd[key] for sd in shards], dim=dims[0]) if dims else first
        out[spec] = joined
    return out


@torch.no_grad()
def load_hf_state_dict(module: nn.Module, hf_state: Mapping[str, torch.Tensor], num_layers: int) -> None:
    """Copy the layers this stage holds out of an HF-named state dict (strict for those layers)."""
    by_layer = hf_to_pipeline_layer_state(hf_state, num_layers)
    for name, child in module.named_children():
        if name.isdigit():
            child.load_state_dict(by_layer[int(name)], strict=True)


# --------------------------------------------------------------------------------------------------
# Gradient-alignment probes on a stage
# --------------------------------------------------------------------------------------------------

def hf_named_view(module: nn.Module, num_layers: int) -> nn.Module:
    """A module tree over this stage's layers with HF names (gpt_neox.layers.{i}...., lm_head), sharing
    the submodules (hooks registered through it act on the stage's layers). Not part of the stage."""
    view, backbone, layers = nn.Module(), nn.Module(), nn.ModuleDict()
    for name, child in module.named_children():
        if not name.isdigit():
            continue
        s = int(name)
        if s == 0:
            backbone.embed_in = child.embed_in
        elif s <= num_layers:
            layers[str(s - 1)] = child
        elif s == num_layers + 1:
            backbone.final_layer_norm = child.final_layer_norm
            view.lm_head = child.lm_head
    backbone.layers = layers
    view.gpt_neox = backbone
    return view


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
