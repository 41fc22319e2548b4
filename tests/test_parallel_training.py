"""Pipeline and tensor parallelism in the trainer (gloo, CPU): every layout trains like one process.

One module fixture runs `train.py` once per layout (AC-ODM with exact alignment statistics, so the reward
is the Gram matrix of the probe gradients, and probe-weight norms in its state) on a 4-layer model:
1 process, then pp=2, tp=2 (2 processes each) and pp=2 x dp=2, tp=2 x dp=2, pp=2 x tp=2 (4 processes). All layouts
start from the same weights and see the same global batches, so losses, per-domain losses, rewards,
mixture weights, validation losses and the final weights must agree with the single process.
"""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch
from trainer_utils import ROOT, interrupt_after, read_metrics, run_train, tiny_config, write_config

from neox.config import load_config
from neox.errors import ConfigError
from neox.parallel.topology import Topology

pytestmark = pytest.mark.xdist_group("parallel_training")  # one worker runs the layouts once

DOMAINS = [f"domain_0{k}" for k in range(3)]
LAYOUTS = {  # name: (processes, overrides)
    "pp2": (2, ["parallel.pipe=2"]),
    "tp2": (2, ["parallel.tensor=2"]),
    "pp2_dp2": (4, ["parallel.pipe=2"]),
    "tp2_dp2": (4, ["parallel.tensor=2"]),
    "pp2_tp2": (4, ["parallel.pipe=2", "parallel.tensor=2"]),
}


def _config(data, run_dir, **extra):
    mixing = {"method": "acodm", "alignment": {"mode": "exact"},
              "acodm": {"hidden_size": 16, "num_hidden_layers": 1, "num_probe_layers": 2, "batch_size": 2,
                        "warmup_steps": 2}}
    return tiny_config(data, run_dir, mixing=mixing, checkpoint={"interval_steps": 3, "keep_last": 0},
                       model={"num_layers": 4, "hidden_size": 64, "num_heads": 4, "vocab_size": 256,
                              "max_seq_len_tokens": 64}, **extra)


def _torchrun(nproc: int) -> tuple[str, ...]:
    from distributed import free_port

    return (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_port", str(free_port()))


@pytest.fixture(scope="module")
def runs(synthetic_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("parallel")
    cfg = write_config(root / "c.yml", _config(synthetic_data, root / "unused"))
    out = {"root": root, "config": cfg, "one": root / "one"}
    run_train(cfg, f"logging.run_dir={out['one']}")
    for name, (nproc, overrides) in LAYOUTS.items():
        out[name] = root / name
        run_train(cfg, f"logging.run_dir={out[name]}", *overrides, launcher=_torchrun(nproc),
                  timeout=400)
    return out


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_trains_like_one_process(runs, layout):
    one, got = read_metrics(runs["one"]), read_metrics(runs[layout])
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([r["loss"] for r in got], [r["loss"] for r in one], rtol=2e-6)
    for d in DOMAINS:  # per-domain losses: summed on the last stage / TP rank 0, over the replicas
        np.testing.assert_allclose([r[f"train_loss/{d}"] for r in got], [r[f"train_loss/{d}"] for r in one],
                                   rtol=2e-6)
        np.testing.assert_allclose([r[f"weights/{d}"] for r in got], [r[f"weights/{d}"] for r in one], rtol=1e-4)
    # The reward is built from the all-reduced Gram matrix of the probe gradients (plus probe norms in
    # the state); it only matches if every stage's, shard's and replica's share was summed exactly once.
    rewards = [r["mixer/reward"] for r in got if "mixer/reward" in r]
    assert len(rewards) == 6
    np.testing.assert_allclose(rewards, [r["mixer/reward"] for r in one if "mixer/reward" in r], rtol=1e-5)
    # The actor's surrogate on replayed steps reads the states, which hold the probe-weight norms (summed over
    # stages and shards), through the actor.
    q = [r["mixer/surrogate"] for r in got if "mixer/surrogate" in r]
    q_one = [r["mixer/surrogate"] for r in one if "mixer/surrogate" in r]
    assert len(q) == len(q_one) > 0
    np.testing.assert_allclose(q, q_one, rtol=1e-4, atol=1e-6)
    ev_one, ev = read_metrics(runs["one"], "eval"), read_metrics(runs[layout], "eval")
    assert [r["step"] for r in ev] == [0, 3, 6]
    for d in DOMAINS + ["mean"]:
        np.testing.assert_allclose([r[f"val_loss/{d}"] for r in ev], [r[f"val_loss/{d}"] for r in ev_one],
                                   rtol=2e-6)
    run = json.loads((runs[layout] / "metrics.jsonl").read_text().splitlines()[0])
    assert run["parallel"]["pipe" if layout.startswith("pp") else "tensor"] == 2


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_checkpoint_holds_the_full_model(runs, layout):
    """model.safetensors is the whole model under HF names whatever the layout (shards gathered, stages
    read back from their layer files), equal to the single process's."""
    from safetensors.torch import load_file

    want = load_file(str(runs["one"] / "checkpoints" / "step_00000006" / "model.safetensors"))
    got = load_file(str(runs[layout] / "checkpoints" / "step_00000006" / "model.safetensors"))
    assert sorted(got) == sorted(want)
    for k in want:
        g, w = got[k], want[k]
        if k.endswith("query_key_value.bias"):
            # The key bias has an exactly-zero gradient (softmax ignores a shift shared by all keys); Adam
            # normalises its rounding noise into lr-sized steps, so only the query and value parts compare.
            g, w = g.view(4, 3, -1)[:, [0, 2]], w.view(4, 3, -1)[:, [0, 2]]
        torch.testing.assert_close(g, w, rtol=1e-4, atol=5e-5, msg=k)


def test_bf16_pipeline_and_tensor_parallel(runs, tmp_path):
    """bf16 (DeepSpeed's bf16 optimizer wrapper, bf16 activations sent between stages, vocab-parallel loss in
    fp32) trains pp=2 x tp=2 close to the fp32 single process."""
    run_dir = tmp_path / "bf16"
    run_train(runs["config"], f"logging.run_dir={run_dir}", "parallel.pipe=2", "parallel.tensor=2",
              "deepspeed.bf16.enabled=true", "schedule.train_steps=3", "eval.interval_steps=0",
              launcher=_torchrun(4), timeout=300)
    got, one = read_metrics(run_dir), read_metrics(runs["one"])[:3]
    assert [r["step"] for r in got] == [1, 2, 3]
    np.testing.assert_allclose([r["loss"] for r in got], [r["loss"] for r in one], rtol=5e-3)
    ev = read_metrics(run_dir, "eval")
    assert np.isfinite([r["val_loss/mean"] for r in ev]).all()


def test_convert_to_hf_reads_parallel_checkpoints(runs, tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from convert_to_hf import main
    finally:
        sys.path.pop(0)
    for layout in ("pp2", "tp2", "pp2_tp2"):
        assert main([str(runs[layout]), "-o", str(tmp_path / layout), "--verify"]) == 0
        assert (tmp_path / layout / "model.safetensors").is_file()


@pytest.mark.parametrize("layout", ["pp2", "tp2", "pp2_tp2"])
def test_resume_at_the_same_layout_equals_uninterrupted(runs, layout, tmp_path):
    nproc, overrides = LAYOUTS[layout]
    resumed = tmp_path / "resumed"
    shutil.copytree(runs[layout], resumed)
    interrupt_after(resumed, 3, later_checkpoints=[6])
    run_train(runs["config"], f"logging.run_dir={resumed}", "checkpoint.resume=auto", *overrides,
              launcher=_torchrun(nproc), timeout=300)
    a, b = read_metrics(runs[layout]), read_metrics(resumed)
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([r["loss"] for r in b], [r["loss"] for r in a], rtol=1e-9)
    np.testing.assert_allclose([r["weights/domain_01"] for r in b], [r["weights/domain_01"] for r in a], rtol=1e-9)


def test_resume_at_another_layout_is_refused(runs, tmp_path):
    ckpt = runs["pp2"] / "checkpoints" / "step_00000003"
    proc = run_train(runs["config"], f"logging.run_dir={tmp_path / 'other'}", f"checkpoint.resume={ckpt}",
                     check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "written with parallel.pipe=2, parallel.tensor=1; this run has pipe=1, tensor=1" in proc.stderr
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- non-finite steps, pipelined


def _nonfinite_worker(rank: int, world_size: int, config: str) -> dict:
    from neox.training.callbacks import Callback
    from neox.training.trainer import Trainer

    trainer = Trainer(load_config(config, ["parallel.pipe=2", "schedule.train_steps=4"]))
    poisoned_step = 2
    stage = trainer.engine.module

    def poison(module, inputs, output):  # NaN on the last stage's logits during step 2 only
        if trainer.step + 1 == poisoned_step and module.training:
            return output * float("nan")
        return output

    if trainer.topology.is_last_stage:
        list(stage.children())[-1].register_forward_hook(poison)

    class Snapshot(Callback):
        def __init__(self):
            self.states = {}

        def post_step(self, trainer, stats, record):
            self.states[trainer.step] = {k: v.detach().clone() for k, v in stage.state_dict().items()}

    snap = Snapshot()
    trainer.callbacks.insert(0, snap)
    trainer.fit()
    unchanged = all(torch.equal(snap.states[1][k], snap.states[2][k]) for k in snap.states[1])
    changed = any(not torch.equal(snap.states[2][k], snap.states[3][k]) for k in snap.states[2])
    return {"skipped": trainer.skipped_steps, "unchanged_by_skipped_step": unchanged, "trained_after": changed}


def test_pipeline_skips_a_nonfinite_step_on_every_stage(synthetic_data, tmp_path):
    """A NaN loss on the last stage vetoes the optimizer step on both stages (the veto travels in the
    statistics all-reduce that runs right before the pipeline's optimizer step)."""
    from distributed import run_distributed

    cfg = write_config(tmp_path / "c.yml", _config(synthetic_data, tmp_path / "run",
                                                   eval={"at_start": False, "interval_steps": 0}))
    results = run_distributed(_nonfinite_worker, 2, str(cfg), timeout_s=300)
    for r in results:
        assert r == {"skipped": 1, "unchanged_by_skipped_step": True, "trained_after": True}
    recs = read_metrics(tmp_path / "run")
    assert [r["skipped_steps"] for r in recs] == [0, 1, 1, 1]
    assert recs[1].get("mixer/skipped_nonfinite") == 1.0


# ----------------------------------------------------------------------------- layouts refused up front


def test_topology_coordinates_match_deepspeed():
    from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

    for pipe, tensor, world in [(1, 1, 4), (2, 1, 4), (1, 2, 4), (2, 1, 8), (1, 4, 8), (4, 1, 8), (2, 2, 8), (2, 2, 4)]:
        ds = PipeModelDataParallelTopology(num_pp=pipe, num_mp=tensor, num_dp=world // (pipe * tensor))
        for rank in range(world):
            topo = Topology.build(pipe, tensor, world, rank)
            c = ds.get_coord(rank)
            assert topo.coordinates() == (c.pipe, c.data, c.model)
            assert topo.counts_losses == (c.model == 0 and c.pipe == pipe - 1)


def test_layouts_that_do_not_fit_are_refused_with_the_numbers(synthetic_data, tmp_path):
    path = write_config(tmp_path / "c.yml", _config(synthetic_data, tmp_path / "run"))
    cases = {
        "model.num_layers (4) must be >= parallel.pipe (5)": ["parallel.pipe=5"],
        "needs deepspeed.zero_optimization.stage 0 or 1": ["parallel.pipe=2", "deepspeed.zero_optimization.stage=2"],
        "mixing.method=doremi with parallel.pipe > 1": ["parallel.pipe=2", "mixing.method=doremi"],
        "model.num_heads (4) must be divisible by parallel.tensor (3)": ["parallel.tensor=3"],
        "model.intermediate_size (ffn size) (192) must be divisible by parallel.tensor (5)":
            ["parallel.tensor=5", "model.num_heads=5", "model.hidden_size=80", "model.intermediate_size=192"],
        "the padded vocabulary (model.vocab_size rounded up to model.make_vocab_size_divisible_by) (255) must be "
        "divisible by parallel.tensor (2)": ["parallel.tensor=2", "model.vocab_size=255",
                                             "model.make_vocab_size_divisible_by=1"],
        "parallel.tensor=2 needs model.dropout == 0": ["parallel.tensor=2", "model.dropout=0.1"],
        "parallel.partition_method must be parameters or uniform": ["parallel.partition_method=foo"],
    }
    for message, overrides in cases.items():
        with pytest.raises(ConfigError) as err:
            load_config(path, overrides)
        assert message in str(err.value), (overrides, str(err.value))
    with pytest.raises(ConfigError, match=r"world size 3 is not divisible by parallel.pipe x parallel.tensor = 2 x 1"):
        load_config(path, ["parallel.pipe=2"]).check_world_size(3)
    with pytest.raises(ConfigError, match="world size 6 is not divisible"):
        Topology.build(pipe=1, tensor=4, world_size=6, rank=0)


def test_parallel_overhead_benchmark_runs(tmp_path):
    """The benchmark's three layouts build in one 2-process job and time their steps (one round: a smoke
    test of the script, not a measurement)."""
    import subprocess

    from trainer_utils import clean_env

    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, "-W", "ignore", str(ROOT / "benchmarks" / "parallel_overhead.py"),
                           "--rounds", "1", "--json", str(out)], cwd=ROOT, env=clean_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert {name: r["layout"] for name, r in rows.items()} == {
        "data": {"pipe": 1, "tensor": 1, "data": 2}, "tensor2": {"pipe": 1, "tensor": 2, "data": 1},
        "pipe2": {"pipe": 2, "tensor": 1, "data": 1}}
    assert rows["data"]["ratio_to_data"] == 1.0 and all(r["step_s"] > 0 for r in rows.values())
    assert "vs data" in proc.stdout
