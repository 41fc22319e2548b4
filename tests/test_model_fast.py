"""The model's fast paths against their plain references: the chunked cross-entropy, the attention backend
choice, activation checkpointing and per-block torch.compile (with and without the alignment probes)."""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F

from acodm.alignment import AlignmentConfig, GradientAlignment
from neox.errors import ConfigError
from neox.model import ModelConfig, build_model, check_attention_backend, compile_layers, per_token_loss
from neox.model import gpt_neox

VOCAB = 96


def tiny(**kw) -> ModelConfig:
    base = dict(num_layers=3, hidden_size=32, num_heads=4, vocab_size=VOCAB, make_vocab_size_divisible_by=32,
                max_seq_len_tokens=16)
    return ModelConfig(**{**base, **kw})


def batches(num: int, seed: int = 0, batch: int = 4, seq: int = 12):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(num):
        tokens = torch.randint(0, VOCAB, (batch, seq + 1), generator=g)
        domain_B = torch.randint(0, 3, (batch,), generator=g)
        out.append((tokens[:, :-1], tokens[:, 1:], domain_B))
    return out


# ------------------------------------------------------------------------------------------ loss

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_loss_matches_cross_entropy_and_its_gradient(monkeypatch, dtype):
    monkeypatch.setattr(gpt_neox, "_LOSS_CHUNK_ELEMENTS", 3 * 50)  # 3-row chunks: several, the last short
    g = torch.Generator().manual_seed(3)
    logits = (4 * torch.randn(2, 7, 50, generator=g)).to(dtype).requires_grad_()
    labels = torch.randint(0, 50, (2, 7), generator=g)
    labels[0, 2] = labels[1, 6] = -100
    upstream = torch.rand(2, 7, generator=g)  # an arbitrary gradient, not just the mean's

    loss = per_token_loss(logits, labels)
    (grad,) = torch.autograd.grad((loss * upstream).sum(), logits)
    ref_logits = logits.detach().float().requires_grad_()
    ref = F.cross_entropy(ref_logits.view(-1, 50), labels.view(-1), reduction="none").view(2, 7)
    (ref_grad,) = torch.autograd.grad((ref * upstream).sum(), ref_logits)

    assert loss.dtype == torch.float32 and grad.dtype == dtype
    assert loss[0, 2] == 0 and loss[1, 6] == 0
    torch.testing.assert_close(loss, ref, atol=1e-6, rtol=1e-6)
    tol = dict(atol=1e-7, rtol=1e-6) if dtype == torch.float32 else dict(atol=4e-3, rtol=1e-2)  # bf16 rounding
    torch.testing.assert_close(grad.float(), ref_grad.to(dtype).float(), **tol)


# ------------------------------------------------------------------------------------------ attention

@pytest.fixture
def fake_flash(monkeypatch):
    """A stand-in flash_attn module (SDPA underneath) that records the dtypes it was called with."""
    calls: list[torch.dtype] = []

    def flash_attn_func(q_BTHD, k_BTHD, v_BTHD, dropout_p=0.0, causal=False):
        calls.append(q_BTHD.dtype)
        y = F.scaled_dot_product_attention(q_BTHD.transpose(1, 2), k_BTHD.transpose(1, 2), v_BTHD.transpose(1, 2),
                                           dropout_p=dropout_p, is_causal=causal)
        return y.transpose(1, 2)

    monkeypatch.setitem(sys.modules, "flash_attn", types.SimpleNamespace(flash_attn_func=flash_attn_func))
    return calls


def test_flash_runs_under_autocast_and_bf16_weights_alike(fake_flash):
    torch.manual_seed(0)
    model = build_model(tiny(attention="flash"))
    ids = torch.randint(0, VOCAB, (2, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # block inputs fp32, q/k/v bf16
        model(ids)
    assert fake_flash == [torch.bfloat16] * 3
    model.to(torch.bfloat16)(ids)  # DeepSpeed bf16: weights and activations bf16
    assert fake_flash == [torch.bfloat16] * 6


def test_flash_refuses_fp32_and_sdpa_never_calls_it(fake_flash):
    torch.manual_seed(0)
    ids = torch.randint(0, VOCAB, (2, 8))
    with pytest.raises(ConfigError, match="model.attention=flash runs in bf16/fp16"):
        build_model(tiny(attention="flash"))(ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        build_model(tiny())(ids)
    assert fake_flash == []


def test_attention_backend_checked_at_start_up(monkeypatch):
    check_attention_backend(tiny(), "cpu")  # sdpa runs anywhere
    with pytest.raises(ConfigError, match="needs a CUDA device, this run is on cpu"):
        check_attention_backend(tiny(attention="flash"), "cpu")
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # import fails
    with pytest.raises(ConfigError, match="flash-attn package, which is not importable") as info:
        check_attention_backend(tiny(attention="flash"), "cuda")
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="model.attention must be 'sdpa' or 'flash'"):
        tiny(attention="flash2")


# ------------------------------------------------------------------------------------------ steps

def _train(cfg: ModelConfig, steps: int, compile_: bool = False, probes: bool = False):
    """Losses per step and (with probes) each step's exact alignment Gram."""
    torch.manual_seed(0)
    model = build_model(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    alignment = None
    if probes:
        alignment = GradientAlignment(model, 3, AlignmentConfig(mode="exact", probe_pattern=r"layers\.(-1|-3)\.mlp"
                                                                                            r"\.dense_4h_to_h$"))
    if compile_:
        compiled = compile_layers(model)
        assert compiled, "nothing was compiled"
    losses, grams = [], []
    for inputs_BT, labels_BT, domain_B in batches(steps):
        if alignment is not None:
            alignment.reset()
            alignment.begin_micro_batch(domain_B[:, None].expand_as(labels_BT), grad_scale=labels_BT.numel())
        loss = per_token_loss(model(inputs_BT), labels_BT).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if alignment is not None:
            grams.append(alignment.gram(alignment.packed(), torch.bincount(domain_B, minlength=3) * labels_BT.shape[1]))
    return torch.tensor(losses), grams


def test_activation_checkpointing_keeps_losses_and_gradients():
    cfg = tiny(dropout=0.1)  # the recompute must replay the same dropout masks
    inputs_BT, labels_BT, _ = batches(1)[0]
    grads = []
    for ac in (False, True):
        torch.manual_seed(0)
        model = build_model(tiny(dropout=0.1, activation_checkpointing=ac)).train()
        torch.manual_seed(1)
        loss = per_token_loss(model(inputs_BT), labels_BT).mean()
        loss.backward()
        grads.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    assert cfg.dropout > 0
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=0, rtol=0)
    for name, g in grads[0][1].items():
        torch.testing.assert_close(grads[1][1][name], g, atol=1e-7, rtol=1e-6, msg=name)


def test_compile_layers_skips_hooked_modules():
    model = build_model(tiny())
    GradientAlignment(model, 2, AlignmentConfig(mode="exact", probe_pattern=r"layers\.-1\.mlp\.dense_4h_to_h$"))
    names = compile_layers(model)
    assert names == ["gpt_neox.layers.0", "gpt_neox.layers.1", "gpt_neox.layers.2.attention"]
    assert set(model.state_dict()) == set(build_model(tiny(), "meta").state_dict())  # names unchanged


@pytest.mark.launches  # torch.compile (inductor) runs the C++ compiler
@pytest.mark.parametrize("activation_checkpointing", [False, True])
def test_compiled_matches_eager_with_probes(activation_checkpointing):
    cfg = tiny(activation_checkpointing=activation_checkpointing)
    # Probes on layers 0 and 2: those blocks are compiled around them, layer 1 as a whole.
    eager_losses, eager_grams = _train(cfg, 3, probes=True)
    losses, grams = _train(cfg, 3, compile_=True, probes=True)
    torch.testing.assert_close(losses, eager_losses, atol=1e-5, rtol=0)
    assert len(grams) == 3
    for got, want in zip(grams, eager_grams):
        torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(want), atol=1e-5, rtol=1e-5)
