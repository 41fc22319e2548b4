"""GPT-NeoX / Pythia decoder (docs/methods.md, "Pythia").

Parameter names are exactly those of transformers' `GPTNeoXForCausalLM`, so exporting is a rename-free
copy of the state dict (`hf_config(cfg)` gives the matching `GPTNeoXConfig`). The model is a sequence of
layer modules -- `EmbeddingLayer`, `TransformerLayer` x L, `FinalLayer` -- each a function of one tensor,
so a pipeline-parallel wrapper can turn them into DeepSpeed LayerSpecs; the plain `GPTNeoX` keeps the HF
module tree (`gpt_neox.embed_in`, `gpt_neox.layers`, `gpt_neox.final_layer_norm`, `lm_head`) and reuses
`TransformerLayer` for its layers. The model knows nothing about ranks or devices.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from neox.errors import ConfigError
from neox.model.config import ModelConfig

__all__ = [
    "GPTNeoX", "EmbeddingLayer", "TransformerLayer", "FinalLayer", "RotaryEmbedding", "Attention", "MLP",
    "init_weights", "per_token_loss", "count_parameters", "build_model", "hf_config", "flops_per_token",
    "check_attention_backend", "compile_layers",
]


# --------------------------------------------------------------------------------------------------
# Rotary position embedding
# --------------------------------------------------------------------------------------------------

class RotaryEmbedding(nn.Module):
    """cos/sin tables for the first `rotary_dims` of each head, computed once up to max_seq_len_tokens.

    The tables are non-persistent buffers so the state dict keeps HF's keys. They are computed in fp32
    with the same ops as HF's GPTNeoXRotaryEmbedding (inv_freq = 1 / base^(arange(0, d, 2) / d),
    freqs = pos * inv_freq), so the values agree bit for bit; HF recomputes them every forward, we don't.
    Only half the table is stored: HF's table is cat(freqs, freqs), both halves equal.
    """

    def __init__(self, rotary_dims: int, max_seq_len_tokens: int, base: float):
        super().__init__()
        assert rotary_dims % 2 == 0 and rotary_dims > 0, rotary_dims
        self.rotary_dims = rotary_dims
        self.max_seq_len_tokens = max_seq_len_tokens
        self.base = base
        half = rotary_dims // 2
        self.register_buffer("cos_half", torch.empty(max_seq_len_tokens, half), persistent=False)  # (S, d/2)
        self.register_buffer("sin_half", torch.empty(max_seq_len_tokens, half), persistent=False)  # (S, d/2)
        if self.cos_half.device.type != "meta":
            self.reset_cache()

    @torch.no_grad()
    def reset_cache(self) -> None:
        """(Re)compute the tables in fp32 on the buffers' device (after `to_empty`, or a dtype cast)."""
        device = self.cos_half.device
        d = self.rotary_dims
        # inv_freq on the CPU then moved, as HF does, so GPU tables match HF's to the bit as well.
        inv_freq = (1.0 / (self.base ** (torch.arange(0, d, 2, dtype=torch.float) / d))).to(device)
        pos = torch.arange(self.max_seq_len_tokens, device=device).float()
        freqs = pos[:, None] * inv_freq[None, :]  # (S, d/2)
        self.cos_half = freqs.cos()
        self.sin_half = freqs.sin()

    def forward(self, x_BHTD: torch.Tensor) -> torch.Tensor:
        """Rotate the first rotary_dims of x (..., T, head_dim); HF's rotate_half convention.

        Positions on the second-to-last axis, so the (T, d/2) tables broadcast over the leading axes
        only: on CPU that is ~2x faster than broadcasting into the middle of a (B, T, H, D) tensor.
        """
        T = x_BHTD.shape[-2]
        d, half = self.rotary_dims, self.rotary_dims // 2
        cos = self.cos_half[:T].to(x_BHTD.dtype)  # (T, d/2); cast like HF: tables in x's dtype
        sin = self.sin_half[:T].to(x_BHTD.dtype)
        x1, x2, x_pass = x_BHTD[..., :half], x_BHTD[..., half:d], x_BHTD[..., d:]
        # HF: x_rot * cat(cos, cos) + cat(-x2, x1) * cat(sin, sin); written per half it is the same
        # float ops (negation is exact) with one concatenation instead of three.
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin, x_pass), dim=-1)


# --------------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------------

def _flash_attn_func():
    try:
        from flash_attn import flash_attn_func  # optional extra [gpu]
    except ImportError as exc:
        raise ConfigError("model.attention=flash needs the flash-attn package, which is not importable; "
                          "pip install flash-attn (the [gpu] extra) or set model.attention: sdpa") from exc
    return flash_attn_func


def check_attention_backend(cfg: ModelConfig, device: str | torch.device) -> None:
    """Fail at start-up, in one line, if ``model.attention`` cannot run on ``device``.

    The backend is what the config says, whatever the precision: flash is never silently replaced by SDPA
    (or the reverse), so a run under autocast and one under DeepSpeed bf16 attend with the same kernel.
    """
    if cfg.attention != "flash":
        return
    if torch.device(device).type != "cuda":
        raise ConfigError(f"model.attention=flash needs a CUDA device, this run is on {torch.device(device)}; "
                          "set model.attention: sdpa")
    _flash_attn_func()


class Attention(nn.Module):
    """Causal self-attention with a fused qkv projection in HF's per-head layout (heads, 3, head_dim)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        self.attention = cfg.attention
        self.dropout = cfg.dropout
        self.max_seq_len_tokens = cfg.max_seq_len_tokens
        self.query_key_value = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.rotary_emb = (RotaryEmbedding(cfg.rotary_dims, cfg.max_seq_len_tokens, cfg.rotary_base)
                           if cfg.rotary_dims > 0 else None)

    def forward(self, x_BTC: torch.Tensor) -> torch.Tensor:
        B, T, _ = x_BTC.shape
        if T > self.max_seq_len_tokens:
            raise ValueError(f"sequence length {T} exceeds model.max_seq_len_tokens={self.max_seq_len_tokens}; "
                             "raise model.max_seq_len_tokens or shorten the input")
        # HF's fused layout: per head [q | k | v], i.e. (heads, 3, head_dim) along the output features.
        qkv = self.query_key_value(x_BTC).view(B, T, self.num_heads, 3 * self.head_dim).transpose(1, 2)
        q, k, v = qkv.split(self.head_dim, dim=-1)  # each (B, H, T, D), strided views
        if self.rotary_emb is not None:
            q, k = self.rotary_emb(q), self.rotary_emb(k)
        dropout_p = self.dropout if self.training else 0.0
        if self.attention == "flash":
            # Gate on q's dtype, not the block input's: under autocast the input is fp32 but q is already
            # bf16 (the qkv matmul's output), exactly as with DeepSpeed's bf16 weights.
            if q.dtype not in (torch.bfloat16, torch.float16):
                raise ConfigError(f"model.attention=flash runs in bf16/fp16 but the attention inputs are {q.dtype}; "
                                  "enable deepspeed bf16 (or autocast) or set model.attention: sdpa")
            y = _flash_attn_func()(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                   dropout_p=dropout_p, causal=True)  # (B, T, H, D)
        else:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)  # (B, H, T, D)
            y = y.transpose(1, 2)  # (B, T, H, D)
        y = y.reshape(B, T, self.num_heads * self.head_dim)  # (B, T, C); under tensor parallelism C/P
        return self.dense(y)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(cfg.hidden_size, cfg.ffn_size)
        self.dense_4h_to_h = nn.Linear(cfg.ffn_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Exact erf GeLU, HF's "gelu": GPT-NeoX trained Pythia with the tanh approximation (its bias_gelu
        # fusion), but every released Pythia config.json says "gelu" and every evaluation of the checkpoints
        # runs erf, so a model we export behaves in transformers as it trained here (the two differ by
        # <= 4.8e-4 per activation; converting the original checkpoints changes their logits that little).
        return self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(x)))


class TransformerLayer(nn.Module):
    """One GPT-NeoX block; hidden (B, T, C) -> hidden (B, T, C). HF's GPTNeoXLayer parameter names."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.parallel_residual = cfg.parallel_residual
        self.dropout = cfg.dropout
        self.input_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layernorm_eps)
        self.post_attention_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layernorm_eps)
        self.attention = Attention(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x_BTC: torch.Tensor) -> torch.Tensor:
        p = self.dropout if self.training else 0.0
        attn = F.dropout(self.attention(self.input_layernorm(x_BTC)), p, self.training)
        if self.parallel_residual:
            # GPT-NeoX: x + attn(ln1(x)) + mlp(ln2(x)); summed in HF's order for bitwise-equal fp32 sums.
            mlp = F.dropout(self.mlp(self.post_attention_layernorm(x_BTC)), p, self.training)
            return mlp + attn + x_BTC
        h = attn + x_BTC
        return F.dropout(self.mlp(self.post_attention_layernorm(h)), p, self.training) + h


class EmbeddingLayer(nn.Module):
    """Pipeline stage head: input ids (B, T) -> hidden (B, T, C)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dropout = cfg.dropout
        self.embed_in = nn.Embedding(cfg.padded_vocab_size, cfg.hidden_size)

    def forward(self, input_ids_BT: torch.Tensor) -> torch.Tensor:
        return F.dropout(self.embed_in(input_ids_BT), self.dropout if self.training else 0.0, self.training)


class FinalLayer(nn.Module):
    """Pipeline stage tail: hidden (B, T, C) -> logits (B, T, padded_vocab)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layernorm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.padded_vocab_size, bias=False)  # untied (Pythia)

    def forward(self, x_BTC: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.final_layer_norm(x_BTC))


class _Backbone(nn.Module):
    """HF's `gpt_neox` submodule: embed_in, layers, final_layer_norm."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_in = nn.Embedding(cfg.padded_vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.num_layers))
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layernorm_eps)


class GPTNeoX(nn.Module):
    """input_ids (B, T) -> logits (B, T, padded_vocab). State-dict keys == transformers' GPTNeoXForCausalLM."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.gpt_neox = _Backbone(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.padded_vocab_size, bias=False)

    def forward(self, input_ids_BT: torch.Tensor) -> torch.Tensor:
        p = self.cfg.dropout if self.training else 0.0
        x = F.dropout(self.gpt_neox.embed_in(input_ids_BT), p, self.training)  # (B, T, C)
        recompute = self.cfg.activation_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.gpt_neox.layers:
            # Non-reentrant: the recompute runs inside the backward, where the alignment probes recognise
            # it and let the first forward's hook do the work; it also keeps the dropout RNG state.
            x = checkpoint(layer, x, use_reentrant=False) if recompute else layer(x)
        return self.lm_head(self.gpt_neox.final_layer_norm(x))  # (B, T, V)

    @classmethod
    def from_hf_state_dict(cls, cfg: ModelConfig, state_dict: dict[str, torch.Tensor]) -> "GPTNeoX":
        """Our model holding the weights of a GPTNeoXForCausalLM state dict (same keys, strict)."""
        model = build_model(cfg, device="meta")
        # HF checkpoints may carry its non-persistent rotary buffer; it is not a weight.
        weights = {k: v for k, v in state_dict.items() if not k.endswith("rotary_emb.inv_freq")}
        model.load_state_dict(weights, strict=True, assign=True)
        _reset_rotary_caches(model)
        return model


# --------------------------------------------------------------------------------------------------
# Compilation (applied from outside, after every hook is in place)
# --------------------------------------------------------------------------------------------------

def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks)


def compile_layers(model: nn.Module) -> list[str]:
    """torch.compile every TransformerLayer under ``model`` in place (per block, as torchtitan does): one
    graph per block shape, compiled once and reused by every layer; parameter names and the module tree
    stay as they were (``nn.Module.compile``), so checkpoints, export and probe names are unchanged.

    A block whose modules carry hooks (the alignment probes' forward hooks, which set tensor hooks and read
    Python state per micro-batch) is compiled around them: its largest hook-free submodules that hold other
    modules (the attention; the MLP when it is not the probe's parent) are compiled, the hooked ones and the
    block's own residual sums run eagerly. So call this after every hook is registered; hooks added later
    to a module inside a compiled region would be traced into it. Works under DeepSpeed (ZeRO 0-2) and
    `model.activation_checkpointing`; ZeRO-3 hooks every module, which leaves nothing to compile. Returns
    the names of the compiled modules.
    """
    compiled: list[str] = []

    def visit(name: str, module: nn.Module) -> None:
        if not any(_has_hooks(m) for m in module.modules()):
            if next(module.children(), None) is not None:  # a lone Linear or LayerNorm gains nothing
                module.compile()
                compiled.append(name)
            return
        for child_name, child in module.named_children():
            visit(f"{name}.{child_name}", child)

    for name, module in model.named_modules():
        if isinstance(module, TransformerLayer):
            visit(name, module)
    return compiled


# --------------------------------------------------------------------------------------------------
# Initialisation, loss, counting, building
# --------------------------------------------------------------------------------------------------

def _reset_rotary_caches(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, RotaryEmbedding):
            # Buffers may be meta (built on meta, weights assigned): materialise next to the weights.
            if module.cos_half.device.type == "meta":
                device = next((p.device for p in model.parameters() if p.device.type != "meta"), "cpu")
                half = module.rotary_dims // 2
                module.cos_half = torch.empty(module.max_seq_len_tokens, half, device=device)
                module.sin_half = torch.empty(module.max_seq_len_tokens, half, device=device)
            module.reset_cache()


@torch.no_grad()
def init_weights(model: nn.Module, cfg: ModelConfig) -> None:
    """Pythia / GPT-NeoX initialisation; draws from the global RNG (seed it with torch.manual_seed).

    small_init N(0, sqrt(2 / (5 * hidden))) (Nguyen & Salazar 2019) for every weight matrix including the
    embedding and the untied head; wang_init N(0, 2 / (num_layers * sqrt(hidden))) for the two projections
    that write into the residual stream (attention.dense, mlp.dense_4h_to_h), so the residual variance stays
    flat with depth; biases 0; LayerNorm weight 1, bias 0. Works for GPTNeoX and the pipeline layer classes;
    also recomputes the rotary tables (needed after `to_empty`).
    """
    small_std = cfg.init_std if cfg.init_std is not None else math.sqrt(2.0 / (5.0 * cfg.hidden_size))
    wang_std = 2.0 / (cfg.num_layers * math.sqrt(cfg.hidden_size))
    for name, module in model.named_modules():
        if isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()
        elif isinstance(module, (nn.Linear, nn.Embedding)):
            is_output_proj = name.endswith("attention.dense") or name.endswith("mlp.dense_4h_to_h")
            module.weight.normal_(0.0, wang_std if is_output_proj else small_std)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
    _reset_rotary_caches(model)


IGNORE_INDEX = -100  # F.cross_entropy's default
# Rows of logits turned into fp32 at once by per_token_loss: (rows x V) fp32 stays in a few MB (on a CPU it
# stays in cache; on a GPU it is a small fraction of the micro-batch's logits).
_LOSS_CHUNK_ELEMENTS = 1 << 19


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Per-token cross-entropy over (N, V) logits of any float dtype, fp32 inside, chunk by chunk.

    F.cross_entropy(logits.float()) keeps an fp32 (N, V) copy (its log-softmax) for the backward; this keeps
    only the logits as they are and rebuilds softmax - onehot per chunk in the backward, so the fp32
    temporaries are (chunk, V). The backward's gradient is in the logits' dtype.
    """

    @staticmethod
    def forward(ctx, logits_NV: torch.Tensor, labels_N: torch.Tensor, chunk_rows: int) -> torch.Tensor:
        N, V = logits_NV.shape
        valid_N = labels_N != IGNORE_INDEX
        safe_N1 = torch.where(valid_N, labels_N, 0)[:, None]  # (N, 1)
        logp_N1 = torch.empty(N, 1, dtype=torch.float32, device=logits_NV.device)
        buf = torch.empty(min(chunk_rows, N), V, dtype=torch.float32, device=logits_NV.device)  # reused
        for s in range(0, N, chunk_rows):
            e = min(s + chunk_rows, N)
            # One fused (vectorised, in-cache) kernel per chunk; fp32 whatever the logits' dtype.
            torch.log_softmax(logits_NV[s:e], dim=1, dtype=torch.float32, out=buf[:e - s])
            torch.gather(buf[:e - s], 1, safe_N1[s:e], out=logp_N1[s:e])
        ctx.save_for_backward(logits_NV, safe_N1, valid_N)
        ctx.chunk_rows = chunk_rows
        return torch.where(valid_N, -logp_N1.squeeze(1), 0.0)

    @staticmethod
    def backward(ctx, grad_N: torch.Tensor):
        logits_NV, safe_N1, valid_N = ctx.saved_tensors
        N, V = logits_NV.shape
        g_N1 = torch.where(valid_N, grad_N.float(), 0.0)[:, None]
        grad_NV = torch.empty_like(logits_NV)
        in_place = grad_NV.dtype == torch.float32  # fp32 logits: build each chunk right in the output
        buf = None if in_place else torch.empty(min(ctx.chunk_rows, N), V, dtype=torch.float32,
                                                device=logits_NV.device)
        for s in range(0, N, ctx.chunk_rows):
            e = min(s + ctx.chunk_rows, N)
            chunk = grad_NV[s:e] if in_place else buf[:e - s]
            torch.softmax(logits_NV[s:e], dim=1, dtype=torch.float32, out=chunk)
            chunk.mul_(g_N1[s:e])
            chunk.scatter_add_(1, safe_N1[s:e], -g_N1[s:e])  # g * (softmax - onehot(label))
            if not in_place:
                grad_NV[s:e].copy_(chunk)
        return grad_NV, None, None


def per_token_loss(logits_BTV: torch.Tensor, labels_BT: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy per position, fp32 (B, T); labels -100 give 0 (ignored).

    fp32 log-sum-exp (bf16/fp16 over 50k classes loses ~2 digits of the loss), computed in chunks so no fp32
    copy of the micro-batch's logits exists in the forward or the backward (_ChunkedCrossEntropy).
    """
    B, T, V = logits_BTV.shape
    chunk_rows = max(1, _LOSS_CHUNK_ELEMENTS // V)
    loss = _ChunkedCrossEntropy.apply(logits_BTV.reshape(B * T, V), labels_BT.reshape(B * T), chunk_rows)
    return loss.view(B, T)


def domain_sums_numel(num_domains: int) -> int:
    """Width of the per-domain block: loss sums, token counts, sample counts (K each), non-finite flag."""
    return 3 * num_domains + 1


@torch.no_grad()
def add_domain_sums(sums: torch.Tensor, num_domains: int, token_loss_BT: torch.Tensor, domain_B: torch.Tensor) -> None:
    """Add one micro-batch to the per-domain block ``sums[:3K + 1]`` (fp64): loss sums, token counts,
    sample counts, and +1 in the non-finite slot if any of its token losses is NaN/inf. Training
    statistics, the pipeline's loss function and evaluation all keep this layout."""
    K = num_domains
    loss_B = token_loss_BT.double().sum(dim=1)
    sums[0:K].index_add_(0, domain_B, loss_B)
    sums[K:2 * K].index_add_(0, domain_B, torch.full_like(loss_B, token_loss_BT.shape[1]))
    sums[2 * K:3 * K].index_add_(0, domain_B, torch.ones_like(loss_B))
    sums[3 * K] += (~torch.isfinite(token_loss_BT)).any().double()


def count_parameters(model: nn.Module, exclude_embeddings: bool = False) -> int:
    """Number of distinct parameters; exclude_embeddings drops embed_in and lm_head (Pythia's convention
    for "non-embedding parameters")."""
    seen: set[int] = set()
    total = 0
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if exclude_embeddings and (name.endswith("embed_in.weight") or name.endswith("lm_head.weight")):
            continue
        total += p.numel()
    return total


def flops_per_token(cfg: ModelConfig, seq_len_tokens: int) -> int:
    """Training FLOPs per token (forward + backward): 6 * N_matmul + 12 * L * C * T.

    N_matmul is every parameter that takes part in a matmul: all but the input embedding (a lookup),
    so the lm_head counts. The attention term is QK^T and AV (2 matmuls x 2 FLOPs x 3 for fwd+bwd per
    layer per position) over the full T x T square, PaLM's convention (causal kernels skip half of it).
    """
    C, L, F_ = cfg.hidden_size, cfg.num_layers, cfg.ffn_size
    per_layer = (C * 3 * C + 3 * C) + (C * C + C) + (C * F_ + F_) + (F_ * C + C) + 4 * C
    n_matmul = L * per_layer + 2 * C + C * cfg.padded_vocab_size
    return 6 * n_matmul + 12 * L * C * seq_len_tokens


def build_model(cfg: ModelConfig, device: str | torch.device = "cpu") -> GPTNeoX:
    """GPTNeoX on `device`. "meta": shapes only, no memory (param counts, deferred init). Otherwise the
    weights are allocated directly on the device and initialised with `init_weights` (no default-init
    pass), using that device's RNG."""
    with torch.device("meta"):
        model = GPTNeoX(cfg)
    if torch.device(device).type == "meta":
        return model
    model.to_empty(device=device)
    init_weights(model, cfg)
    return model


def hf_config(cfg: ModelConfig, **extra: Any):
    """transformers.GPTNeoXConfig describing the same model (for export and parity tests).

    transformers >= 5 keeps rotary settings in `rope_parameters` (partial_rotary_factor, rope_theta);
    older versions read `rotary_pct` / `rotary_emb_base`. Both are set so either computes our model.
    """
    try:
        import transformers
    except ImportError as exc:
        raise ImportError("hf_config needs transformers (the [eval] extra): pip install transformers") from exc
    fields: dict[str, Any] = dict(
        vocab_size=cfg.padded_vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.ffn_size,
        max_position_embeddings=cfg.max_seq_len_tokens,
        layer_norm_eps=cfg.layernorm_eps,
        use_parallel_residual=cfg.parallel_residual,
        tie_word_embeddings=False,
        hidden_act="gelu",
        attention_bias=True,
        attention_dropout=cfg.dropout,
        hidden_dropout=cfg.dropout,
        bos_token_id=0,
        eos_token_id=0,
        initializer_range=cfg.init_std if cfg.init_std is not None else math.sqrt(2.0 / (5.0 * cfg.hidden_size)),
    )
    major = int(transformers.__version__.split(".")[0])
    if major >= 5:
        fields["rope_parameters"] = {"rope_type": "default", "rope_theta": float(cfg.rotary_base),
                                     "partial_rotary_factor": float(cfg.rotary_pct)}
    else:
        fields.update(rotary_pct=cfg.rotary_pct, rotary_emb_base=cfg.rotary_base)
    fields.update(extra)
    return transformers.GPTNeoXConfig(**fields)
