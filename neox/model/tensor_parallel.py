"""Megatron-style tensor parallelism for our GPT-NeoX, with plain `torch.distributed` collectives.

Device-agnostic on purpose (gloo on CPU, NCCL on GPU): megatron-core's `tensor_parallel` calls
`torch.cuda` unconditionally. The tensor-parallel (TP) process group is always an argument; nothing
here reads a global.

Layout (Megatron-LM, Shoeybi et al. 2019), for a TP group of size P:
- `ColumnParallelLinear`: W (out, in) split by rows, each rank holds out/P outputs; the input is
  replicated, so its gradient is all-reduced in backward (`copy_to_tp_region`).
- `RowParallelLinear`: W split by columns, each rank holds in/P inputs and a partial product that is
  all-reduced in forward (`reduce_from_tp_region`); the bias is replicated and added once, after the sum.
- `VocabParallelEmbedding`: rows of the embedding split by vocabulary; out-of-shard ids give 0, summed.
- `vocab_parallel_per_token_loss`: cross-entropy over vocab-sharded logits without gathering them.

Sharded parameters carry `model_parallel = True` (what DeepSpeed 0.19.8's `is_model_parallel_parameter`
reads, deepspeed/runtime/utils.py; `tensor_model_parallel` is set too, Megatron's name) plus
`partition_dim` / `partition_stride`. DeepSpeed counts a parameter WITHOUT the mark only on TP rank 0
when it sums squared gradient norms over the model-parallel group, so a missing mark double-counts and a
wrong mark under-counts: ZeRO's clipping norm would be silently wrong.

`shard_gpt_neox(model, tp_group)` turns an unsharded `GPTNeoX` into this rank's shard with the same
HF parameter names; `gather_tp_state_dict` rebuilds the full state dict (checkpoint conversion).
The sharded model returns vocab-sharded logits (B, T, V/P): score them with
`vocab_parallel_per_token_loss`, not `per_token_loss`.
"""

from __future__ import annotations


import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from neox.errors import ConfigError
from neox.model.config import ModelConfig
from neox.model.gpt_neox import MLP, Attention, GPTNeoX, RotaryEmbedding, build_model

__all__ = [
    "ColumnParallelLinear",
    "ParallelAttention",
    "RowParallelLinear",
    "VocabParallelEmbedding",
    "copy_to_tp_region",
    "gather_from_tp_region",
    "gather_tp_state_dict",
    "is_tensor_parallel_param",
    "reduce_from_tp_region",
    "scatter_to_tp_region",
    "shard_gpt_neox",
    "shard_layers_in_place",
    "vocab_parallel_per_token_loss",
]

IGNORE_INDEX = -100  # labels with this id give loss 0 (F.cross_entropy's default, per_token_loss's too)


def _size(group: dist.ProcessGroup | None) -> int:
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def _rank(group: dist.ProcessGroup | None) -> int:
    return dist.get_rank(group) if dist.is_available() and dist.is_initialized() else 0


def _divide(total: int, parts: int, what: str) -> int:
    if total % parts:
        raise ConfigError(f"{what} ({total}) must be divisible by parallel.tensor ({parts}); "
                          f"choose parallel.tensor among the divisors of {total}")
    return total // parts


def _all_reduce(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    if _size(group) == 1:
        return x
    x = x.contiguous().clone()  # never reduce into a tensor autograd saved for another op
    dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group)
    return x


def _gather_last_dim(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    size = _size(group)
    if size == 1:
        return x
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x, group=group)
    return torch.cat(parts, dim=-1)


def _split_last_dim(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    size = _size(group)
    if size == 1:
        return x
    local = _divide(x.shape[-1], size, "last dimension of the tensor to scatter")
    r = _rank(group)
    return x[..., r * local:(r + 1) * local].contiguous()


# --------------------------------------------------------------------------------------------------
# Autograd functions: the four region boundaries
# --------------------------------------------------------------------------------------------------

class _CopyToTP(torch.autograd.Function):
    """Identity forward; all-reduce backward (a replicated input feeding sharded weights)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, grad):
        return _all_reduce(grad, ctx.group), None


class _ReduceFromTP(torch.autograd.Function):
    """All-reduce forward (sum of partial products); identity backward."""

    @staticmethod
    def forward(ctx, x, group):
        return _all_reduce(x, group)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _GatherFromTP(torch.autograd.Function):
    """All-gather along the last dim forward; take this rank's slice backward."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _gather_last_dim(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _split_last_dim(grad, ctx.group), None


class _ScatterToTP(torch.autograd.Function):
    """Take this rank's slice of the last dim forward; all-gather backward."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _split_last_dim(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _gather_last_dim(grad, ctx.group), None


def copy_to_tp_region(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    return _CopyToTP.apply(x, group)


def reduce_from_tp_region(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    return _ReduceFromTP.apply(x, group)


def gather_from_tp_region(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    return _GatherFromTP.apply(x, group)


def scatter_to_tp_region(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    return _ScatterToTP.apply(x, group)


# --------------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------------

def _mark_sharded(p: torch.Tensor, partition_dim: int) -> None:
    """The attributes DeepSpeed (model_parallel) and Megatron (tensor_model_parallel, partition_*) read."""
    p.model_parallel = True
    p.tensor_model_parallel = True
    p.partition_dim = partition_dim
    p.partition_stride = 1  # contiguous shards (qkv is split by whole heads, see ParallelAttention)


def is_tensor_parallel_param(p: torch.Tensor) -> bool:
    """True for a sharded parameter (DeepSpeed's test); False for one replicated across the TP group."""
    return bool(getattr(p, "model_parallel", False) or getattr(p, "tensor_model_parallel", False))


class ColumnParallelLinear(nn.Module):
    """y = x Wᵀ + b with W's rows (outputs) split over the TP group: (.., in) -> (.., out/P), or
    (.., out) with ``gather_output``. Weight (out/P, in), bias (out/P,), both sharded along dim 0."""

    def __init__(self, in_features: int, out_features: int, tp_group: dist.ProcessGroup | None,
                 bias: bool = True, gather_output: bool = False,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.tp_group = tp_group
        self.in_features, self.out_features = in_features, out_features
        self.gather_output = gather_output
        size = _size(tp_group)
        self.out_local = _divide(out_features, size, "ColumnParallelLinear out_features")
        self.weight = nn.Parameter(torch.empty(self.out_local, in_features, device=device, dtype=dtype))
        self.bias = (nn.Parameter(torch.empty(self.out_local, device=device, dtype=dtype)) if bias else None)
        self.mark_parameters()

    def mark_parameters(self) -> None:
        _mark_sharded(self.weight, 0)
        if self.bias is not None:
            _mark_sharded(self.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(copy_to_tp_region(x, self.tp_group), self.weight, self.bias)  # (.., out/P)
        return gather_from_tp_region(y, self.tp_group) if self.gather_output else y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features} (local {self.out_local}), "
                f"bias={self.bias is not None}, gather_output={self.gather_output}")


class RowParallelLinear(nn.Module):
    """y = Σ_ranks x_r W_rᵀ + b with W's columns (inputs) split over the TP group: (.., in/P) -> (.., out)
    (or (.., in) -> (.., out) with ``input_is_parallel=False``). Weight (out, in/P) sharded along dim 1;
    the bias is replicated and added once after the all-reduce, so it is not summed P times."""

    def __init__(self, in_features: int, out_features: int, tp_group: dist.ProcessGroup | None,
                 bias: bool = True, input_is_parallel: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.tp_group = tp_group
        self.in_features, self.out_features = in_features, out_features
        self.input_is_parallel = input_is_parallel
        size = _size(tp_group)
        self.in_local = _divide(in_features, size, "RowParallelLinear in_features")
        self.weight = nn.Parameter(torch.empty(out_features, self.in_local, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype)) if bias else None
        self.mark_parameters()

    def mark_parameters(self) -> None:
        _mark_sharded(self.weight, 1)  # the bias stays unmarked: replicated, counted once by DeepSpeed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.input_is_parallel:
            x = scatter_to_tp_region(x, self.tp_group)
        y = reduce_from_tp_region(F.linear(x, self.weight), self.tp_group)  # (.., out)
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features} (local {self.in_local}), out_features={self.out_features}, "
                f"bias={self.bias is not None}, input_is_parallel={self.input_is_parallel}")


class VocabParallelEmbedding(nn.Module):
    """ids (..) -> (.., dim); rows [rank*V/P, (rank+1)*V/P) of the table live on this rank."""

    def __init__(self, num_embeddings: int, embedding_dim: int, tp_group: dist.ProcessGroup | None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.tp_group = tp_group
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        size, rank = _size(tp_group), _rank(tp_group)
        self.vocab_local = _divide(num_embeddings, size, "VocabParallelEmbedding num_embeddings (padded vocab)")
        self.vocab_start = rank * self.vocab_local
        self.weight = nn.Parameter(torch.empty(self.vocab_local, embedding_dim, device=device, dtype=dtype))
        self.mark_parameters()

    def mark_parameters(self) -> None:
        _mark_sharded(self.weight, 0)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        local = ids - self.vocab_start
        outside = (local < 0) | (local >= self.vocab_local)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)  # (.., dim)
        out = out.masked_fill(outside.unsqueeze(-1), 0.0)  # exactly one rank contributes each row
        return reduce_from_tp_region(out, self.tp_group)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings} (local {self.vocab_local}), {self.embedding_dim}"


# --------------------------------------------------------------------------------------------------
# Vocab-parallel cross-entropy
# --------------------------------------------------------------------------------------------------

class _VocabParallelCE(torch.autograd.Function):
    """Megatron's vocab-parallel cross-entropy, per token: three all-reduces of (N,) vectors (max,
    target logit, Σexp) instead of gathering (N, V) logits."""

    @staticmethod
    def forward(ctx, logits_NV, labels_N, group):
        logits_NV = logits_NV.float()  # fp32 softmax, as per_token_loss
        vocab_local = logits_NV.shape[-1]
        start = _rank(group) * vocab_local
        # Subtracting the global max keeps exp() in range; it cancels in the loss.
        max_N = logits_NV.max(dim=-1).values
        if _size(group) > 1:
            dist.all_reduce(max_N, op=dist.ReduceOp.MAX, group=group)
        shifted_NV = logits_NV - max_N.unsqueeze(-1)
        local_N = labels_N - start
        on_shard_N = (local_N >= 0) & (local_N < vocab_local)  # False for IGNORE_INDEX too
        idx_N = local_N.masked_fill(~on_shard_N, 0)
        target_N = shifted_NV.gather(-1, idx_N.unsqueeze(-1)).squeeze(-1).masked_fill(~on_shard_N, 0.0)
        exp_NV = shifted_NV.exp_()  # in place: shifted is not needed any more
        sum_exp_N = exp_NV.sum(dim=-1)
        if _size(group) > 1:
            both = torch.stack([target_N, sum_exp_N])  # one all-reduce for both sums
            dist.all_reduce(both, op=dist.ReduceOp.SUM, group=group)
            target_N, sum_exp_N = both[0], both[1]
        valid_N = labels_N != IGNORE_INDEX
        loss_N = (sum_exp_N.log() - target_N).masked_fill(~valid_N, 0.0)
        softmax_NV = exp_NV.div_(sum_exp_N.unsqueeze(-1))
        ctx.save_for_backward(softmax_NV, idx_N, on_shard_N, valid_N)
        return loss_N

    @staticmethod
    def backward(ctx, grad_N):
        softmax_NV, idx_N, on_shard_N, valid_N = ctx.saved_tensors
        # d loss / d logit = softmax - onehot(target); the onehot is on the shard holding the target.
        grad_NV = softmax_NV.clone()
        rows = torch.arange(grad_NV.shape[0], device=grad_NV.device)
        grad_NV[rows, idx_N] -= on_shard_N.to(grad_NV.dtype)
        grad_NV.mul_((grad_N.float() * valid_N.to(grad_NV.dtype)).unsqueeze(-1))
        return grad_NV, None, None


def vocab_parallel_per_token_loss(logits_local_BTV: torch.Tensor, labels_BT: torch.Tensor,
                                  tp_group: dist.ProcessGroup | None) -> torch.Tensor:
    """Next-token cross-entropy per position from vocab-sharded logits, fp32 (B, T); labels -100 give 0.

    Equals `per_token_loss(gathered logits, labels)` on every rank of the TP group (not reduced over
    tokens, so per-domain loss sums work as in the unsharded model). The logits' grad is cast back to
    their dtype by autograd.
    """
    B, T, V_local = logits_local_BTV.shape
    if labels_BT.shape != (B, T):
        raise ValueError(f"labels_BT must have shape {(B, T)} to match logits {tuple(logits_local_BTV.shape)}, "
                         f"got {tuple(labels_BT.shape)}")
    loss_N = _VocabParallelCE.apply(logits_local_BTV.reshape(B * T, V_local), labels_BT.reshape(B * T), tp_group)
    return loss_N.view(B, T)


# --------------------------------------------------------------------------------------------------
# The sharded GPT-NeoX
# --------------------------------------------------------------------------------------------------

class ParallelAttention(Attention):
    """`Attention` over this rank's heads: qkv column-parallel, dense row-parallel.

    HF's fused qkv rows are laid out (heads, 3, head_dim), so a contiguous split of the rows is a split
    by whole heads (partition_stride 1): each rank attends with heads [rank*H/P, (rank+1)*H/P) and
    `dense` sums the heads' contributions across ranks. The forward is `Attention`'s, run on H/P heads.
    """

    def __init__(self, attention: nn.Module, tp_group: dist.ProcessGroup | None,
                 device: torch.device | str | None = None):
        nn.Module.__init__(self)  # not Attention.__init__: the projections here are the sharded ones
        size = _size(tp_group)
        hidden = attention.query_key_value.in_features
        self.num_heads = _divide(attention.num_heads, size, "model.num_heads")
        self.head_dim = attention.head_dim
        self.attention = attention.attention
        self.dropout = attention.dropout
        self.max_seq_len_tokens = attention.max_seq_len_tokens
        self.query_key_value = ColumnParallelLinear(hidden, 3 * hidden, tp_group, device=device)
        self.dense = RowParallelLinear(hidden, hidden, tp_group, input_is_parallel=True, device=device)
        rot = attention.rotary_emb
        self.rotary_emb = (RotaryEmbedding(rot.rotary_dims, rot.max_seq_len_tokens, rot.base)
                           if rot is not None else None)


def _shard(full: torch.Tensor, dim: int, rank: int, size: int) -> torch.Tensor:
    local = full.shape[dim] // size
    return full.narrow(dim, rank * local, local)


def check_tensor_parallel(cfg: ModelConfig, size: int) -> None:
    """Refuse a model that ``size`` tensor-parallel ranks cannot split (the config checks this too)."""
    _divide(cfg.num_heads, size, "model.num_heads")
    _divide(cfg.ffn_size, size, "model.intermediate_size (ffn size)")
    _divide(cfg.padded_vocab_size, size, "the padded vocabulary (model.vocab_size rounded up to "
            "model.make_vocab_size_divisible_by)")
    if cfg.dropout > 0:
        # Replicated activations would need the same dropout mask on every TP rank and sharded ones
        # different masks (Megatron's RNG tracker); not implemented, and Pythia trains without dropout.
        raise ConfigError(f"parallel.tensor={size} needs model.dropout == 0, got {cfg.dropout}; set "
                          "model.dropout: 0.0 or parallel.tensor: 1")


def _parallelize(root: nn.Module, cfg, tp_group: dist.ProcessGroup | None) -> None:
    """Swap, in place and on the meta device, the GPT-NeoX layers under ``root`` for their tensor-parallel
    versions: embed_in vocab-parallel, lm_head / qkv / dense_h_to_4h column-parallel, attention.dense /
    dense_4h_to_h row-parallel. ``root`` is a GPTNeoX or a pipeline stage holding some of its layers."""
    C, V, F_ = cfg.hidden_size, cfg.padded_vocab_size, cfg.ffn_size
    for module in list(root.modules()):
        for name, child in list(module.named_children()):
            if name == "embed_in" and isinstance(child, nn.Embedding):
                setattr(module, name, VocabParallelEmbedding(V, C, tp_group, device="meta"))
            elif name == "lm_head" and isinstance(child, nn.Linear):
                setattr(module, name, ColumnParallelLinear(C, V, tp_group, bias=False, gather_output=False,
                                                           device="meta"))
            elif isinstance(child, Attention) and not isinstance(child, ParallelAttention):
                setattr(module, name, ParallelAttention(child, tp_group, device="meta"))
            elif isinstance(child, MLP):
                child.dense_h_to_4h = ColumnParallelLinear(C, F_, tp_group, device="meta")
                child.dense_4h_to_h = RowParallelLinear(F_, C, tp_group, input_is_parallel=True, device="meta")


def _materialize(root: nn.Module, full: dict[str, torch.Tensor], tp_group: dist.ProcessGroup | None,
                 device: torch.device, dtype: torch.dtype) -> None:
    """Allocate ``root`` on ``device`` and load this rank's shard of the full (unsharded) state dict."""
    root.to_empty(device=device)
    root.to(dtype=dtype)
    for module in root.modules():
        if isinstance(module, RotaryEmbedding):
            module.reset_cache()  # fp32 tables, as the unsharded model computes them
        if isinstance(module, (ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding)):
            module.mark_parameters()  # re-mark: to_empty off "meta" makes new Parameter objects
    root.load_state_dict(_local_state_dict(root, full, _rank(tp_group), _size(tp_group)), strict=True)


def shard_gpt_neox(model: GPTNeoX, tp_group: dist.ProcessGroup | None) -> GPTNeoX:
    """This rank's tensor-parallel shard of ``model`` (unchanged), with the same HF parameter names.

    qkv / dense_h_to_4h / lm_head column-parallel, attention.dense / dense_4h_to_h row-parallel, embed_in
    vocab-parallel; LayerNorms and row-parallel biases replicated. The result is a `GPTNeoX` whose
    forward returns vocab-sharded logits (B, T, V/P) -- use `vocab_parallel_per_token_loss`. Every rank
    of ``tp_group`` must call this with the same model.
    """
    cfg = model.cfg
    check_tensor_parallel(cfg, _size(tp_group))
    ref = model.gpt_neox.embed_in.weight
    tp = build_model(cfg, device="meta")
    _parallelize(tp, cfg, tp_group)
    _materialize(tp, model.state_dict(), tp_group, ref.device, ref.dtype)
    tp.train(model.training)
    return tp


def shard_layers_in_place(module: nn.Module, cfg, tp_group: dist.ProcessGroup | None) -> nn.Module:
    """Replace the GPT-NeoX layers under ``module`` (e.g. a pipeline stage) by this rank's tensor-parallel
    shards, keeping the module objects that hold them (DeepSpeed's PipelineModule keeps references to its
    layers) and their weights. A last stage then returns vocab-sharded logits."""
    check_tensor_parallel(cfg, _size(tp_group))
    ref = next(module.parameters())
    full = {k: v.detach().clone() for k, v in module.state_dict().items()}
    _parallelize(module, cfg, tp_group)
    _materialize(module, full, tp_group, ref.device, ref.dtype)
    return module


def _partition_dims(tp_model: nn.Module) -> dict[str, int]:
    return {name: int(p.partition_dim) for name, p in tp_model.named_parameters() if is_tensor_parallel_param(p)}


def _local_state_dict(tp_model: nn.Module, full: dict[str, torch.Tensor], rank: int,
                      size: int) -> dict[str, torch.Tensor]:
    dims = _partition_dims(tp_model)
    return {k: (_shard(v, dims[k], rank, size) if k in dims else v) for k, v in full.items()}


@torch.no_grad()
def gather_tp_state_dict(tp_model: nn.Module, tp_group: dist.ProcessGroup | None) -> dict[str, torch.Tensor]:
    """The unsharded state dict (HF names) rebuilt from the TP shards; a collective: every rank of
    ``tp_group`` must call it, and every rank gets the full dict."""
    dims = _partition_dims(tp_model)
    size = _size(tp_group)
    out: dict[str, torch.Tensor] = {}
    for name, t in tp_model.state_dict().items():
        if name not in dims or size == 1:
            out[name] = t.detach().clone()
            continue
        t = t.detach().contiguous()
        parts = [torch.empty_like(t) for _ in range(size)]
        dist.all_gather(parts, t, group=tp_group)
        out[name] = torch.cat(parts, dim=dims[name])
    return out
