"""Tensor-parallel GPT-NeoX (neox/model/tensor_parallel.py): tp=2 on gloo vs the unsharded model.

One 2-rank run computes everything the parity tests compare (spawning processes dominates the cost);
the unsharded reference runs in the test process from the same seed.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
from distributed import run_distributed

from acodm.alignment import AlignmentConfig, GradientAlignment
from neox.errors import ConfigError
from neox.model.config import ModelConfig
from neox.model.gpt_neox import build_model, per_token_loss
from neox.model.tensor_parallel import (
    ColumnParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
    gather_tp_state_dict,
    is_tensor_parallel_param,
    shard_gpt_neox,
    vocab_parallel_per_token_loss,
)

TP = 2
B, T, K = 2, 8, 3
# 4 heads of 8 dims, 2 rotary dims per head; vocab 250 padded to 256.
CFG = ModelConfig(num_layers=2, hidden_size=32, num_heads=4, vocab_size=250, make_vocab_size_divisible_by=64,
                  max_seq_len_tokens=16)
PROBES = ["gpt_neox.layers.1.mlp.dense_4h_to_h", "gpt_neox.layers.1.mlp.dense_h_to_4h"]


def _inputs():
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, CFG.vocab_size, (B, T), generator=g)
    labels = torch.randint(0, CFG.vocab_size, (B, T), generator=g)
    labels[0, -1] = -100  # an ignored token
    domains = torch.randint(0, K, (B, T), generator=g)
    domains[1, 0] = -1  # a token outside every domain
    return ids, labels, domains


def _model():
    torch.manual_seed(0)
    model = build_model(CFG)
    with torch.no_grad():  # non-zero biases so "bias added once" is actually tested
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)
    return model


def _forward_backward(model, loss_fn):
    """Mean loss over valid tokens; alignment hooks on PROBES (exact) with grad_scale = #valid tokens."""
    ids, labels, domains = _inputs()
    ga = GradientAlignment(model, K, AlignmentConfig(mode="exact", probe_pattern=PROBES))
    num_valid = int((labels != -100).sum())
    ga.begin_micro_batch(domains, grad_scale=float(num_valid))
    logits = model(ids)
    loss_BT = loss_fn(logits, labels)
    (loss_BT.sum() / num_valid).backward()
    return logits, loss_BT, ga


class _MPU:
    """The slice of DeepSpeed's `mpu` interface its norm code calls."""

    def __init__(self, group):
        self.group = group

    def get_model_parallel_group(self):
        return self.group

    def get_model_parallel_rank(self):
        return dist.get_rank(self.group)

    def get_model_parallel_world_size(self):
        return dist.get_world_size(self.group)

    def get_tensor_model_parallel_rank(self):
        return dist.get_rank(self.group)


def _tp_grad_norm(tp_model: torch.nn.Module, tp_group: dist.ProcessGroup | None) -> float:
    """Global L2 norm of the gradients the way DeepSpeed computes it across a TP group: every rank
    sums ‖g‖² of its sharded parameters, only TP rank 0 adds the replicated ones, then one all-reduce."""
    rank = dist.get_rank(tp_group)
    device = next(tp_model.parameters()).device  # NCCL reduces device tensors only
    total = torch.zeros((), dtype=torch.float64, device=device)
    for p in tp_model.parameters():
        if p.grad is not None and (rank == 0 or is_tensor_parallel_param(p)):
            total += p.grad.detach().double().pow(2).sum()
    if dist.get_world_size(tp_group) > 1:
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=tp_group)
    return math.sqrt(float(total))


def _tp_worker(rank: int, world_size: int) -> dict:
    group = dist.new_group(list(range(world_size)))  # an explicit, non-default group
    full = _model()
    tp = shard_gpt_neox(full, group)
    logits_local, loss_BT, ga = _forward_backward(
        tp, lambda logits, labels: vocab_parallel_per_token_loss(logits, labels, group))
    out: dict = {"loss_BT": loss_BT.detach(), "logits_local_shape": tuple(logits_local.shape)}
    parts = [torch.empty_like(logits_local) for _ in range(world_size)]
    dist.all_gather(parts, logits_local.detach().contiguous(), group=group)
    out["logits"] = torch.cat(parts, dim=-1)

    grads, replicated_grads = {}, {}
    for name, p in tp.named_parameters():
        g = p.grad.detach().contiguous()
        if is_tensor_parallel_param(p):
            gs = [torch.empty_like(g) for _ in range(world_size)]
            dist.all_gather(gs, g, group=group)
            grads[name] = torch.cat(gs, dim=p.partition_dim)
        else:
            grads[name] = g
            replicated_grads[name] = g
    out["grads"] = grads
    out["replicated_grads"] = replicated_grads
    out["grad_norm"] = _tp_grad_norm(tp, group)

    import deepspeed
    from deepspeed.runtime.utils import get_weight_norm

    deepspeed.init_distributed(dist_backend="gloo")
    # DeepSpeed's own model-parallel filter (is_model_parallel_parameter / TP rank 0) on our marks.
    out["ds_weight_norm"] = get_weight_norm(list(tp.parameters()), mpu=_MPU(group))

    packed = ga.packed()
    dist.all_reduce(packed, group=group)
    out["packed"] = packed
    out["state_dict"] = gather_tp_state_dict(tp, group)
    out["sharded"] = sorted(n for n, p in tp.named_parameters() if is_tensor_parallel_param(p))

    errors = {}
    for key, cfg in {"heads": ModelConfig(num_layers=1, hidden_size=48, num_heads=3, vocab_size=256,
                                          make_vocab_size_divisible_by=64, max_seq_len_tokens=8),
                     "vocab": ModelConfig(num_layers=1, hidden_size=32, num_heads=4, vocab_size=251,
                                          make_vocab_size_divisible_by=1, max_seq_len_tokens=8),
                     "dropout": ModelConfig(num_layers=1, hidden_size=32, num_heads=4, vocab_size=256,
                                            make_vocab_size_divisible_by=64, max_seq_len_tokens=8,
                                            dropout=0.1)}.items():
        try:
            shard_gpt_neox(build_model(cfg, device="meta"), group)
            errors[key] = None
        except ConfigError as exc:
            errors[key] = str(exc)
    for key, make in {"column": lambda: ColumnParallelLinear(8, 7, group),
                      "row": lambda: RowParallelLinear(5, 8, group),
                      "embedding": lambda: VocabParallelEmbedding(9, 4, group)}.items():
        try:
            make()
            errors[key] = None
        except ConfigError as exc:
            errors[key] = str(exc)
    out["errors"] = errors
    return out


@pytest.fixture(scope="module")
def tp_results():
    return run_distributed(_tp_worker, TP, timeout_s=120)


@pytest.fixture(scope="module")
def reference():
    model = _model()
    logits, loss_BT, ga = _forward_backward(model, per_token_loss)
    return model, logits.detach(), loss_BT.detach(), ga


def test_logits_and_per_token_losses_match_unsharded(tp_results, reference):
    _, logits, loss_BT, _ = reference
    for r in tp_results:
        assert r["logits_local_shape"] == (B, T, CFG.padded_vocab_size // TP)
        torch.testing.assert_close(r["logits"], logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(r["loss_BT"], loss_BT, atol=1e-5, rtol=1e-5)
    assert loss_BT[0, -1] == 0 and tp_results[0]["loss_BT"][0, -1] == 0  # ignored label
    assert loss_BT.abs().min() < loss_BT.abs().max()  # not a degenerate constant


def test_gradients_match_unsharded(tp_results, reference):
    model = reference[0]
    want = {n: p.grad for n, p in model.named_parameters()}
    for r in tp_results:
        assert set(r["grads"]) == set(want)
        for name, g in r["grads"].items():
            torch.testing.assert_close(g, want[name], atol=1e-5, rtol=1e-4, msg=name)
    # Replicated parameters see identical gradients on every TP rank (DeepSpeed counts rank 0's only).
    for name, g in tp_results[0]["replicated_grads"].items():
        torch.testing.assert_close(tp_results[1]["replicated_grads"][name], g, atol=1e-6, rtol=0, msg=name)


def test_sharded_parameters_are_marked(tp_results):
    sharded = tp_results[0]["sharded"]
    assert "gpt_neox.embed_in.weight" in sharded and "lm_head.weight" in sharded
    for i in range(CFG.num_layers):
        p = f"gpt_neox.layers.{i}."
        for n in ("attention.query_key_value.weight", "attention.query_key_value.bias", "attention.dense.weight",
                  "mlp.dense_h_to_4h.weight", "mlp.dense_h_to_4h.bias", "mlp.dense_4h_to_h.weight"):
            assert p + n in sharded
        for n in ("attention.dense.bias", "mlp.dense_4h_to_h.bias", "input_layernorm.weight"):
            assert p + n not in sharded  # replicated: marking them would count them TP times


def test_grad_norm_matches_unsharded(tp_results, reference):
    model = reference[0]
    want = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters()))
    want_weights = math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in model.parameters()))
    for r in tp_results:
        assert r["grad_norm"] == pytest.approx(want, rel=1e-5)
        assert r["ds_weight_norm"] == pytest.approx(want_weights, rel=1e-5)


def test_gather_state_dict_round_trip(tp_results, reference):
    want = _model().state_dict()  # the weights before the backward (no optimizer step ran)
    for r in tp_results:
        got = r["state_dict"]
        assert list(got) == list(want)
        for k in want:
            assert torch.equal(got[k], want[k]), k


def test_alignment_statistics_sum_to_unsharded(tp_results, reference):
    ga = reference[3]
    want = ga.packed()
    assert want.abs().max() > 0
    for r in tp_results:
        torch.testing.assert_close(r["packed"], want, atol=1e-5, rtol=1e-4)


def test_non_divisible_sizes_raise_clear_errors(tp_results):
    errors = tp_results[0]["errors"]
    assert "model.num_heads (3)" in errors["heads"] and "parallel.tensor (2)" in errors["heads"]
    assert "(251)" in errors["vocab"] and "parallel.tensor (2)" in errors["vocab"]
    assert "model.dropout" in errors["dropout"]
    assert "out_features (7)" in errors["column"]
    assert "in_features (5)" in errors["row"]
    assert "num_embeddings" in errors["embedding"] and "(9)" in errors["embedding"]


def test_single_rank_is_the_unsharded_model(reference):
    """Without a process group (tp=1) the TP model is the plain model, loss included."""
    _, logits, loss_BT, _ = reference
    tp = shard_gpt_neox(_model(), None)
    ids, labels, _ = _inputs()
    got = tp(ids)
    torch.testing.assert_close(got, logits, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(vocab_parallel_per_token_loss(got, labels, None), loss_BT, atol=1e-6, rtol=1e-6)


def test_probe_slices_come_from_the_partition_marks():
    """The layers carry only Megatron's partition marks; acodm.alignment reads the slice off them."""
    from acodm.alignment import ProbeSlice, partition_slice

    col, row = ColumnParallelLinear(4, 6, None), RowParallelLinear(6, 4, None)
    assert partition_slice(col, col.weight) == ProbeSlice(out_offset=0, out_full=6)
    assert partition_slice(row, row.weight) == ProbeSlice(in_offset=0, in_full=6)
    gathered = ColumnParallelLinear(4, 6, None, gather_output=True)  # the hooks see the full output
    assert partition_slice(gathered, gathered.weight) == ProbeSlice()
    assert partition_slice(torch.nn.Linear(4, 6), torch.nn.Linear(4, 6).weight) == ProbeSlice()
    col.weight.partition_stride = 2
    with pytest.raises(ValueError, match="partition_stride=2"):
        partition_slice(col, col.weight)
