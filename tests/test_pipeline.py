"""Pipeline-parallel GPT-NeoX (neox/model/pipeline.py) against the unsharded model, gloo on CPU.

One 2-process run (2 stages, DeepSpeed PipelineEngine, 3 x engine.train_batch with 2 micro-batches and
torch AdamW) is shared by the parity tests; the reference is the plain GPTNeoX trained in this process
with the same weights, micro-batches and optimizer.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile

import numpy as np
import pytest
import torch
from distributed import run_distributed

from acodm.alignment import AlignmentConfig, GradientAlignment
from neox.model.config import ModelConfig
from neox.model.gpt_neox import GPTNeoX, build_model, per_token_loss
from neox.model.pipeline_checkpoint import (
    hf_to_pipeline_layer_state,
    pipeline_to_hf_state_dict,
    read_layer_checkpoints,
    spec_index_of_layer,
)

CFG = ModelConfig(num_layers=4, hidden_size=32, num_heads=4, vocab_size=96, make_vocab_size_divisible_by=8,
                  max_seq_len_tokens=16)
NUM_DOMAINS = 3
MICRO_B, SEQ_T, GRAD_ACCUM, STEPS, LR = 2, 8, 2, 3, 1e-2
# Default probes (layers -1, -3, -5 of 4): layers 3 and 1; with a uniform split of the 6 specs, layer 1
# (spec 2) is on stage 0 and layer 3 (spec 4) on stage 1.
ALIGN = AlignmentConfig(mode="exact")


def _batches() -> list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
    """STEPS x GRAD_ACCUM micro-batches of (input_ids_BT, labels_BT, domain_B)."""
    g = torch.Generator().manual_seed(7)
    steps = []
    for _ in range(STEPS):
        mbs = []
        for _ in range(GRAD_ACCUM):
            tokens = torch.randint(0, CFG.vocab_size, (MICRO_B, SEQ_T + 1), generator=g)
            domain_B = torch.randint(0, NUM_DOMAINS, (MICRO_B,), generator=g)
            mbs.append((tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous(), domain_B))
        steps.append(mbs)
    return steps


def _initial_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    return build_model(CFG).state_dict()


def _layer_states_of(module: torch.nn.Module) -> dict[int, dict[str, torch.Tensor]]:
    """{spec index: state dict} of the layers this stage holds (keys "3.attention.dense.weight" split)."""
    out: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in module.state_dict().items():
        index, rest = key.split(".", 1)
        out.setdefault(int(index), {})[rest] = value
    return out


def _pipeline_worker(rank: int, world_size: int, hf_state, steps, checkpoint_interval: int = 0,
                     save_dir: str | None = None) -> dict:
    import deepspeed
    import torch.distributed as dist

    from neox.model.pipeline import build_pipeline_module
    from neox.model.pipeline_checkpoint import load_hf_state_dict
    from neox.training.pipeline_alignment import PipelineAlignment, stage_probe_names

    deepspeed.init_distributed(dist_backend="gloo")
    module = build_pipeline_module(CFG, num_stages=2, num_domains=NUM_DOMAINS, partition_method="uniform", seed=0,
                                   activation_checkpoint_interval=checkpoint_interval)
    load_hf_state_dict(module, hf_state, CFG.num_layers)
    alignment = PipelineAlignment(module, CFG, NUM_DOMAINS, ALIGN)
    if alignment.local is not None:
        # Same factor as the trainer: delta is d(mean loss / grad_accum)/dy; statistics are of the loss SUM.
        module.micro_batch_hook = lambda domain_B, seq_len: alignment.begin_micro_batch(
            domain_B[:, None].expand(-1, seq_len), grad_scale=domain_B.shape[0] * seq_len * GRAD_ACCUM)
    forwards = [0]  # forward calls of the first transformer layer on this stage (2 per micro-batch if checkpointed)
    next(m for m in module.children() if type(m).__name__ == "TransformerPipe").register_forward_hook(
        lambda *_: forwards.__setitem__(0, forwards[0] + 1))
    optimizer = torch.optim.AdamW(module.parameters(), lr=LR)
    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, config={
        "train_batch_size": MICRO_B * GRAD_ACCUM, "train_micro_batch_size_per_gpu": MICRO_B,
        "gradient_accumulation_steps": GRAD_ACCUM, "steps_per_print": 10**9, "zero_optimization": {"stage": 1},
        "gradient_clipping": 0.0})  # DeepSpeed clips at 1.0 unless told; the reference does not clip
    losses, totals, packed, grams = [], [], [], []
    for mbs in steps:
        module.loss_fn.reset()
        alignment.reset()
        data = iter([((ids, dom), (labels, dom)) for ids, labels, dom in mbs])
        losses.append(float(engine.train_batch(data_iter=data)))
        totals.append(module.loss_fn.totals())
        stats = alignment.packed()
        dist.all_reduce(stats)  # the trainer's one collective over the whole job
        packed.append(stats)
        if engine.is_last_stage():  # the stage that has the token counts
            grams.append(alignment.gram(stats, module.loss_fn.totals()["token_count"]))
    if save_dir is not None:
        engine.save_checkpoint(save_dir, tag="last")
    return {"losses": losses, "totals": totals, "packed": packed, "grams": grams, "is_last": engine.is_last_stage(),
            "probes": stage_probe_names(module, CFG, ALIGN.probe_pattern), "layers": _layer_states_of(module),
            "forwards": forwards[0]}


def _reference(hf_state, steps) -> dict:
    model = GPTNeoX.from_hf_state_dict(CFG, {k: v.clone() for k, v in hf_state.items()})  # assigns, not copies
    alignment = GradientAlignment(model, NUM_DOMAINS, ALIGN)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    losses, totals, packed, grams = [], [], [], []
    for mbs in steps:
        alignment.reset()
        loss_sum = torch.zeros(NUM_DOMAINS, dtype=torch.float64)
        token_count = torch.zeros(NUM_DOMAINS, dtype=torch.float64)
        step_loss = 0.0
        for ids, labels, dom in mbs:
            alignment.begin_micro_batch(dom[:, None].expand(-1, SEQ_T), grad_scale=dom.shape[0] * SEQ_T * GRAD_ACCUM)
            token_loss = per_token_loss(model(ids), labels)
            (token_loss.mean() / GRAD_ACCUM).backward()
            step_loss += float(token_loss.detach().mean()) / GRAD_ACCUM
            loss_sum.index_add_(0, dom, token_loss.detach().double().sum(1))
            token_count.index_add_(0, dom, torch.full((dom.shape[0],), float(SEQ_T), dtype=torch.float64))
        optimizer.step()
        optimizer.zero_grad()
        losses.append(step_loss)
        totals.append({"loss_sum": loss_sum, "token_count": token_count})
        packed.append(alignment.packed().clone())
        grams.append(alignment.gram(packed[-1], token_count))
    return {"losses": losses, "totals": totals, "packed": packed, "grams": grams, "state": model.state_dict(),
            "probes": alignment.probe_names}


@functools.lru_cache(maxsize=1)
def _runs() -> tuple[list[dict], dict, str]:
    hf_state, steps = _initial_state(), _batches()
    save_dir = tempfile.mkdtemp(prefix="test_pipeline_")
    atexit.register(shutil.rmtree, save_dir, ignore_errors=True)
    pipe = run_distributed(_pipeline_worker, 2, hf_state, steps, 0, save_dir, timeout_s=120)
    return pipe, _reference(hf_state, steps), os.path.join(save_dir, "last")


def test_pp2_losses_match_unsharded_training():
    pipe, ref, _ = _runs()
    assert pipe[1]["is_last"] and not pipe[0]["is_last"]
    assert [p["forwards"] for p in pipe] == [STEPS * GRAD_ACCUM] * 2
    for r in (0, 1):  # train_batch hands the last stage's loss to every stage
        assert pipe[r]["losses"] == pytest.approx(ref["losses"], rel=1e-5)
    # The weights moved (3 AdamW steps), so equal losses at steps 2-3 mean equal updates.
    assert ref["losses"][0] != pytest.approx(ref["losses"][-1], rel=1e-3)


def test_pp2_trained_weights_match_after_name_mapping():
    pipe, ref, _ = _runs()
    layers = {**pipe[0]["layers"], **pipe[1]["layers"]}
    assert sorted(layers) == list(range(CFG.num_layers + 2))
    assert set(pipe[0]["layers"]).isdisjoint(pipe[1]["layers"])
    merged = pipeline_to_hf_state_dict(layers, CFG.num_layers)
    assert set(merged) == set(ref["state"])
    for name, value in ref["state"].items():
        torch.testing.assert_close(merged[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_stage_checkpoint_files_convert_to_hf_names():
    _, ref, ckpt_dir = _runs()
    merged = pipeline_to_hf_state_dict(read_layer_checkpoints(ckpt_dir), CFG.num_layers)
    assert set(merged) == set(ref["state"])
    for name, value in ref["state"].items():
        torch.testing.assert_close(merged[name], value, rtol=1e-5, atol=1e-6, msg=name)
    with pytest.raises(FileNotFoundError, match="layer_XX"):
        read_layer_checkpoints(os.path.dirname(ckpt_dir))


def test_per_domain_loss_sums_on_last_stage_match_unsharded():
    pipe, ref, _ = _runs()
    for got, want in zip(pipe[1]["totals"], ref["totals"]):
        torch.testing.assert_close(got["loss_sum"], want["loss_sum"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got["token_count"], want["token_count"])
        assert float(got["token_count"].sum()) == MICRO_B * SEQ_T * GRAD_ACCUM
        assert float(got["nonfinite"]) == 0.0
    # The first stage computes no loss: its accumulator stays empty.
    assert all(float(t["token_count"].sum()) == 0.0 for t in pipe[0]["totals"])


def test_alignment_statistics_summed_over_stages_match_unsharded():
    pipe, ref, _ = _runs()
    # Each stage finds its own probe under the HF name the unsharded model uses.
    assert pipe[0]["probes"] == ["gpt_neox.layers.1.mlp.dense_4h_to_h"]
    assert pipe[1]["probes"] == ["gpt_neox.layers.3.mlp.dense_4h_to_h"]
    assert ref["probes"] == pipe[0]["probes"] + pipe[1]["probes"]
    for step, want in enumerate(ref["packed"]):
        assert float(want.abs().sum()) > 0
        for r in (0, 1):  # after the all-reduce every rank holds the job's statistics
            torch.testing.assert_close(pipe[r]["packed"][step], want, rtol=1e-4, atol=1e-6)
    # The Gram matrix read from the job-wide layout equals the unsharded model's.
    assert pipe[0]["grams"] == [] and len(pipe[1]["grams"]) == len(ref["grams"])
    for got, want in zip(pipe[1]["grams"], ref["grams"]):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-10)


def test_pp2_activation_checkpointing_keeps_losses_and_alignment():
    # DeepSpeed's reentrant checkpointing runs each stage forward twice (no_grad, then inside the
    # backward); the probes must still bind each micro-batch's domains to its own recompute.
    hf_state, steps = _initial_state(), _batches()
    pipe = run_distributed(_pipeline_worker, 2, hf_state, steps[:2], 1, timeout_s=120)
    _, ref, _ = _runs()
    assert [p["forwards"] for p in pipe] == [2 * 2 * GRAD_ACCUM] * 2  # each layer recomputed in the backward
    assert pipe[1]["losses"] == pytest.approx(ref["losses"][:2], rel=1e-5)
    for step in range(2):
        torch.testing.assert_close(pipe[0]["packed"][step], ref["packed"][step], rtol=1e-4, atol=1e-6)


def test_name_mapping_round_trip():
    state = build_model(CFG, device="meta").state_dict()
    by_layer = hf_to_pipeline_layer_state(state, CFG.num_layers)
    assert set(by_layer[0]) == {"embed_in.weight"}
    assert set(by_layer[CFG.num_layers + 1]) == {"final_layer_norm.weight", "final_layer_norm.bias", "lm_head.weight"}
    assert "mlp.dense_4h_to_h.weight" in by_layer[spec_index_of_layer(-1, CFG.num_layers)]
    back = pipeline_to_hf_state_dict(by_layer, CFG.num_layers)
    assert list(back) == list(state) and all(back[k] is state[k] for k in state)
    with pytest.raises(ValueError, match="missing"):
        pipeline_to_hf_state_dict({k: v for k, v in by_layer.items() if k != 2}, CFG.num_layers)
    with pytest.raises(ValueError, match="unexpected key"):
        hf_to_pipeline_layer_state({"embed_out.weight": state["lm_head.weight"]}, CFG.num_layers)
    assert spec_index_of_layer(0, CFG.num_layers) == 1 and spec_index_of_layer(-1, CFG.num_layers) == CFG.num_layers
