"""Pipeline-parallel GPT-NeoX: our layer classes as DeepSpeed LayerSpecs (docs/design.md, "Parallel layouts").

The spec list is [embedding, transformer layer 0 .. L-1, final], so global transformer layer i is spec
index i + 1, and on a stage the `PipelineModule` names it "{i+1}" ("3.mlp.dense_4h_to_h" is HF's
"gpt_neox.layers.2.mlp.dense_4h_to_h"). What travels:

- data iterator (first AND last stage read it): ((input_ids_BT, domain_B), (labels_BT, domain_B));
- between stages: (hidden_BTC, domain_B) -- domain_B is an integer tensor, so DeepSpeed sends no
  gradient for it, and every stage, not only the last, knows the domain of each sequence;
- last stage: `DomainLoss(logits, (labels_BT, domain_B))` (neox/model/domain_loss.py) returns the mean token
  loss and accumulates per-domain sums.

Gradient alignment on a stage: `micro_batch_hook` on the module is called with (domain_B, seq_len_tokens)
before every forward of that stage (1F1B interleaving is fine: the hooks bind the domain ids to the forward
they precede); the statistics over a stage's probes are neox/training/pipeline_alignment.py's. Converting
between stage checkpoints and HF names: neox/model/pipeline_checkpoint.py.

Initialisation: spec index s is initialised with `init_weights` under the RNG seed (seed, s), so the
weights do not depend on the number of stages or the partition (they are not those of `build_model` under
torch.manual_seed(seed); load HF weights with `load_hf_state_dict` to start from a given model).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from neox.model.config import ModelConfig
from neox.model.domain_loss import DomainLoss
from neox.model.gpt_neox import EmbeddingLayer, FinalLayer, TransformerLayer, init_weights

__all__ = ["EmbeddingPipe", "FinalPipe", "TransformerPipe", "build_pipeline_module"]

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


