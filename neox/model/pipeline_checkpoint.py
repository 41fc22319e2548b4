"""Pipeline stages and HF names: the spec index of a layer, stage checkpoints to and from HF state dicts, and a
view of a stage's layers under HF names (spec index s = HF layer s - 1; 0 the embedding, L + 1 the final layer)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch
from torch import nn

from neox.model.config import ModelConfig
from neox.model.gpt_neox import build_model


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
