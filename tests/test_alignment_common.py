"""Helpers shared by the alignment tests (no tests here): a tiny NeoX-named model, domain batches, the
trainer's step convention with GradientAlignment hooks, and the brute-force per-domain gradient reference."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.checkpoint as torch_checkpoint
from torch import nn

from acodm.alignment import GradientAlignment

MicroBatch = tuple[torch.Tensor, torch.Tensor]  # (ids (B, T+1), domain per sample (B,))


class _MLP(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(hidden, 4 * hidden)
        self.dense_4h_to_h = nn.Linear(4 * hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(x)))


class _Block(nn.Module):
    """Pre-LN block: a causal running mean mixes tokens (so δ_t depends on later tokens), then an MLP."""

    def __init__(self, hidden: int):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(hidden)
        self.mix = nn.Linear(hidden, hidden)
        self.mlp = _MLP(hidden)

    def forward(self, x_BTC: torch.Tensor) -> torch.Tensor:
        h = self.input_layernorm(x_BTC)
        steps = torch.arange(1, h.shape[1] + 1, device=h.device, dtype=h.dtype)[None, :, None]
        h = h + self.mix(h.cumsum(dim=1) / steps)
        return x_BTC + self.mlp(h)


class TinyNeoX(nn.Module):
    """ids (B, T) -> logits (B, T, V); module names follow GPT-NeoX (``layers.{i}.mlp.dense_4h_to_h``).

    ``checkpoint``: None, "reentrant" or "non_reentrant" activation checkpointing of every block.
    """

    def __init__(self, vocab: int = 64, hidden: int = 32, num_layers: int = 3, seed: int = 0,
                 checkpoint: str | None = None):
        super().__init__()
        torch.manual_seed(seed)
        self.embed_in = nn.Embedding(vocab, hidden)
        self.layers = nn.ModuleList(_Block(hidden) for _ in range(num_layers))
        self.final_layer_norm = nn.LayerNorm(hidden)
        self.lm_head = nn.Linear(hidden, vocab)
        self.checkpoint = checkpoint

    def forward(self, ids_BT: torch.Tensor) -> torch.Tensor:
        x = self.embed_in(ids_BT)
        for layer in self.layers:
            if self.checkpoint is None:
                x = layer(x)
            else:
                x = torch_checkpoint.checkpoint(layer, x, use_reentrant=self.checkpoint == "reentrant")
        return self.lm_head(self.final_layer_norm(x))


def make_micro_batches(seed: int, num_micro: int, batch: int, seq_len: int, vocab: int,
                       domains: Sequence[int], num_domains: int) -> list[MicroBatch]:
    """Random micro-batches; domain k draws most tokens from its own slice of the vocabulary, so the
    domains' gradients differ. Every domain in ``domains`` appears at least once over the step."""
    g = torch.Generator().manual_seed(seed)
    dom_all = torch.tensor(list(domains) * (num_micro * batch // len(domains) + 1))[: num_micro * batch]
    dom_all = dom_all[torch.randperm(len(dom_all), generator=g)]
    band = vocab // num_domains
    out = []
    for i in range(num_micro):
        dom_B = dom_all[i * batch:(i + 1) * batch]
        own = dom_B[:, None] * band + torch.randint(0, band, (batch, seq_len + 1), generator=g)
        noise = torch.randint(0, vocab, (batch, seq_len + 1), generator=g)
        ids = torch.where(torch.rand(batch, seq_len + 1, generator=g) < 0.8, own, noise)
        out.append((ids, dom_B))
    return out


def token_losses(logits_fn: Callable[[torch.Tensor], torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """(B, T) per-token cross-entropy in fp32."""
    logits = logits_fn(ids[:, :-1])
    return F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten(), reduction="none").view(ids.shape[0], -1)


def run_step(logits_fn: Callable[[torch.Tensor], torch.Tensor], aligners: Sequence[GradientAlignment],
             micro_batches: Sequence[MicroBatch], num_domains: int,
             backward: Callable[[torch.Tensor], None] | None = None, divide_by_accum: bool = True) -> np.ndarray:
    """The trainer's convention: loss = mean over micro-batch tokens / accum, grad_scale = tokens * accum.

    Returns the per-domain token counts (K,). ``backward`` replaces ``loss.backward()`` (DeepSpeed's
    engine.backward divides by the accumulation steps itself: pass ``divide_by_accum=False`` then).
    """
    accum = len(micro_batches)
    count_K = np.zeros(num_domains, dtype=np.int64)
    for ga in aligners:
        ga.reset()
    for ids, dom_B in micro_batches:
        dom_BT = dom_B[:, None].expand(-1, ids.shape[1] - 1)
        for ga in aligners:
            ga.begin_micro_batch(dom_BT, grad_scale=float(dom_BT.numel() * accum))
        loss = token_losses(logits_fn, ids).mean()
        if divide_by_accum:
            loss = loss / accum
        (backward or torch.Tensor.backward)(loss)
        count_K += np.bincount(dom_BT.reshape(-1).numpy(), minlength=num_domains)
    return count_K


def brute_force_gradients(model: nn.Module, logits_fn: Callable[[torch.Tensor], torch.Tensor],
                          micro_batches: Sequence[MicroBatch], probe_names: Sequence[str],
                          num_domains: int) -> list[list[torch.Tensor] | None]:
    """Per domain k: probe weight gradients (float64) of Σ_{t∈k} loss_t / n_k, one backward per domain."""
    named = dict(model.named_modules())
    out: list[list[torch.Tensor] | None] = []
    for k in range(num_domains):
        n_k = sum(int((dom_B == k).sum()) * (ids.shape[1] - 1) for ids, dom_B in micro_batches)
        if n_k == 0:
            out.append(None)
            continue
        model.zero_grad(set_to_none=True)
        for ids, dom_B in micro_batches:
            if not (dom_B == k).any():
                continue
            loss_BT = token_losses(logits_fn, ids)
            (loss_BT[dom_B == k].sum() / n_k).backward()
        out.append([named[p].weight.grad.detach().double().clone() for p in probe_names])
    model.zero_grad(set_to_none=True)
    return out


def gram_from_gradients(grads: list[list[torch.Tensor] | None]) -> np.ndarray:
    k = len(grads)
    flat = [torch.cat([g.reshape(-1) for g in gs]) if gs is not None else None for gs in grads]
    gram = np.zeros((k, k))
    for i in range(k):
        for j in range(k):
            if flat[i] is not None and flat[j] is not None:
                gram[i, j] = float(flat[i] @ flat[j])
    return gram


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))
