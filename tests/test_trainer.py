"""train.py end to end on synthetic domains: launchers, resume, kill during a checkpoint, NaN steps."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from distributed import free_port
from neox.config import load_config
from neox.errors import ConfigError
from tests.trainer_utils import (ROOT, clean_env, interrupt_after, read_metrics, run_train, tiny_config,
                                 train_in_process, write_config)


def _losses(run_dir):
    return [r["loss"] for r in read_metrics(run_dir)]


def test_python_run_writes_metrics_checkpoint_and_config(synthetic_data, tmp_path):
    run_dir = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yml", tiny_config(synthetic_data, run_dir))
    proc = run_train(cfg, "schedule.train_steps=4")
    train = read_metrics(run_dir)
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) for r in train)
    for rec in train:
        w = [rec[f"weights/domain_0{k}"] for k in range(3)]
        assert abs(sum(w) - 1) < 1e-9
        assert rec["tokens"] == rec["step"] * 8 * 32
    evals = read_metrics(run_dir, "eval")
    assert [r["step"] for r in evals] == [0, 3, 4]
    assert evals[-1]["val_ppl/mean"] < evals[0]["val_ppl/mean"]  # it learns something in 4 steps
    assert math.isclose(evals[-1]["val_ppl/mean"], np.mean([evals[-1][f"val_ppl/domain_0{k}"] for k in range(3)]))
    first = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert first["kind"] == "run" and first["domains"] == ["domain_00", "domain_01", "domain_02"]
    saved = yaml.safe_load((run_dir / "config.yml").read_text())
    assert saved["schedule"]["train_steps"] == 4  # the override is in the resolved config
    ckpt = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    assert ckpt.name == "step_00000004"
    for name in ("model.safetensors", "trainer.json", "data.json", "config.yml", "mixer", "deepspeed"):
        assert (ckpt / name).exists(), name
    assert "eval step 4" in proc.stderr
    assert "mixing over 3 domains, 4 steps of 8 x 32 tokens; layout pipe 1 x tensor 1 x data 1 on 1 cpu" in proc.stderr


def test_two_processes_match_one(synthetic_data, tmp_path):
    """Data parallel over 2 gloo ranks (deepspeed launcher) sees the same global batches, per-domain losses and
    gradient-alignment Gram matrix (through AC-ODM's reward) as 1 process."""
    mixing = {"method": "acodm", "alignment": {"mode": "exact"},
              "acodm": {"hidden_size": 16, "num_hidden_layers": 1, "num_probe_layers": 2, "batch_size": 2,
                        "warmup_steps": 2}}
    one, two = tmp_path / "one", tmp_path / "two"
    run_train(write_config(tmp_path / "one.yml", tiny_config(synthetic_data, one, mixing=mixing)))
    launcher = (sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2",
                "--master_port", str(free_port()))
    run_train(write_config(tmp_path / "two.yml", tiny_config(synthetic_data, two, mixing=mixing)), launcher=launcher)
    a, b = read_metrics(one), read_metrics(two)
    np.testing.assert_allclose([r["loss"] for r in a], [r["loss"] for r in b], rtol=2e-5)
    np.testing.assert_allclose([r["mixer/reward"] for r in a if "mixer/reward" in r],
                               [r["mixer/reward"] for r in b if "mixer/reward" in r], rtol=1e-3)
    for k in range(3):  # the mixer (rank 0) saw the same all-reduced statistics
        key = f"weights/domain_0{k}"
        np.testing.assert_allclose([r[key] for r in a], [r[key] for r in b], rtol=1e-3)


def test_torchrun_launcher(synthetic_data, tmp_path):
    run_dir = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yml", tiny_config(synthetic_data, run_dir))
    run_train(cfg, "schedule.train_steps=2", launcher=(sys.executable, "-m", "torch.distributed.run",
                                                       "--nproc_per_node", "2", "--master_port",
                                                       str(free_port())))
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2]


@pytest.mark.parametrize("method", ["odm"])
def test_resume_equals_uninterrupted(synthetic_data, tmp_path, method):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    base = dict(mixing={"method": method}, checkpoint={"interval_steps": 3})
    train_in_process(write_config(tmp_path / "a.yml", tiny_config(synthetic_data, straight, **base)))
    cfg_b = write_config(tmp_path / "b.yml", tiny_config(synthetic_data, resumed, **base))
    train_in_process(cfg_b)
    interrupt_after(resumed, 3, later_checkpoints=[6])
    train_in_process(cfg_b, "checkpoint.resume=auto")
    a, b = read_metrics(straight), read_metrics(resumed)
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]  # bitwise on one CPU process
    assert [r["weights/domain_01"] for r in a] == [r["weights/domain_01"] for r in b]


def test_killed_during_checkpoint_resumes_from_previous(synthetic_data, tmp_path):
    """SIGKILL while checkpoints are being written every step; the resumed run ends like an uninterrupted one.

    A run that finishes before the kill lands in a checkpoint write is tried again (up to 5 times); never
    hitting the window fails the test rather than passing it untested."""
    reference = tmp_path / "reference"
    base = dict(mixing={"method": "odm"}, schedule={"train_steps": 12, "warmup_steps": 1},
                checkpoint={"interval_steps": 1, "keep_last": 2}, eval={"interval_steps": 0, "at_start": False,
                                                                       "val_samples_per_domain": 4})
    run_train(write_config(tmp_path / "r.yml", tiny_config(synthetic_data, reference, **base)))
    for attempt in range(5):
        killed = tmp_path / f"killed{attempt}"
        cfg = write_config(tmp_path / f"k{attempt}.yml", tiny_config(synthetic_data, killed, **base))
        proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), str(cfg)], cwd=ROOT, env=clean_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ckpts = killed / "checkpoints"
        deadline = time.time() + 180
        saw_partial = False
        while time.time() < deadline and proc.poll() is None:
            partial = list(ckpts.glob("step_*.tmp")) if ckpts.exists() else []
            if partial and (ckpts / "latest").exists():
                proc.send_signal(signal.SIGKILL)
                saw_partial = True
                break
            time.sleep(0.001)
        proc.kill()
        proc.wait(timeout=60)
        if saw_partial:
            break
    else:
        pytest.fail("5 runs finished before a SIGKILL could land in a checkpoint write")
    run_train(cfg, "checkpoint.resume=auto")
    assert not list(ckpts.glob("*.tmp"))
    a, b = read_metrics(reference), read_metrics(killed)
    assert [r["step"] for r in b] == list(range(1, 13))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]


def test_refuses_to_overwrite_a_run(synthetic_data, tmp_path):
    run_dir = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yml", tiny_config(synthetic_data, run_dir))
    trainer = train_in_process(cfg, "schedule.train_steps=2")
    assert trainer.mixing.statistics.alignment is None  # static mixing: no probe hooks, nothing collected
    with pytest.raises(FileExistsError, match="checkpoint.resume=auto"):
        train_in_process(cfg, "schedule.train_steps=2")


def test_config_errors_exit_cleanly(synthetic_data, tmp_path):
    cfg = write_config(tmp_path / "c.yml", tiny_config(synthetic_data, tmp_path / "run"))
    proc = run_train(cfg, "optimiser.lr=1", check=False)
    assert proc.returncode == 2
    assert "unknown config key 'optimiser'; did you mean 'optimizer'?" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_config_validation(tmp_path, synthetic_data):
    path = write_config(tmp_path / "c.yml", tiny_config(synthetic_data, tmp_path / "run"))
    with pytest.raises(ConfigError, match="data.micro_batch_sequences"):
        load_config(path, ["data.micro_batch_sequences=3"])
    with pytest.raises(ConfigError, match="model.hidden_size .* must be an integer|model.hidden_size must"):
        load_config(path, ["model.hidden_size=abc"])
    with pytest.raises(ConfigError, match="divisible by data.micro_batch_sequences x data-parallel size"):
        load_config(path).check_world_size(3)
    with pytest.raises(ConfigError, match="did you mean 'acodm'"):
        load_config(path, ["mixing.method=acdom"])
    with pytest.raises(ConfigError, match="deepspeed.gradient_clipping is derived"):
        load_config(path, ["deepspeed.gradient_clipping=1.0"])
    cfg = load_config(path, ["mixing.acodm.reward=paper", "schedule.train_steps=9"])
    assert cfg.mixing.acodm == {"reward": "paper"} and cfg.schedule.train_steps == 9


# bf16 runs on the CPU too. "bf16 accumulation, unchecked": DeepSpeed's ZeRO optimizer (not BF16_Optimizer)
# that does not look at bf16 gradients, so only our veto stops the step and holds the LR.
PRECISIONS = {
    "fp32 zero0": {"zero_optimization": {"stage": 0}},
    "fp32 zero1": {"zero_optimization": {"stage": 1}},
    "bf16 zero1": {"zero_optimization": {"stage": 1}, "bf16": {"enabled": True}},
    "bf16 zero1 bf16 accumulation, unchecked": {"zero_optimization": {"stage": 1}, "data_types": {
        "grad_accum_dtype": "bf16"}, "bf16": {"enabled": True, "check_grad_overflow": False}},
}


@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_nonfinite_steps_are_skipped_then_the_run_stops(synthetic_data, tmp_path, precision):
    """A skipped step changes nothing: weights, optimizer state and the LR schedule stay where they were."""
    import torch

    from neox.config import load_config
    from neox.training.trainer import NonFiniteLossError, Trainer

    cfg = write_config(tmp_path / "c.yml", tiny_config(
        synthetic_data, tmp_path / "run", schedule={"train_steps": 10, "warmup_steps": 0},
        deepspeed=PRECISIONS[precision], max_nonfinite_steps=3,
        eval={"at_start": False, "interval_steps": 0, "val_samples_per_domain": 4}))
    trainer = Trainer(load_config(cfg))
    poisoned_steps = {2, 4, 5, 6}  # step 2 alone is skipped; 4, 5, 6 in a row stop the run

    def poison(module, inputs, output):  # the test's own hook: NaN logits on chosen steps
        return output * float("nan") if trainer.step + 1 in poisoned_steps else output

    trainer.engine.module.register_forward_hook(poison)
    from neox.training.callbacks import Callback

    class Snapshot(Callback):  # the weights right after the last good step (3)
        def post_step(self, trainer, stats, record):
            if trainer.step == 3:
                self.state = {k: v.detach().clone() for k, v in trainer.engine.module.state_dict().items()}

    snap = Snapshot()
    trainer.callbacks.insert(0, snap)
    with pytest.raises(NonFiniteLossError, match="3 optimizer steps in a row"):
        trainer.fit()
    assert trainer.step == 6 and trainer.skipped_steps == 4
    recs = read_metrics(tmp_path / "run")
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5, 6]
    assert [r["skipped_steps"] for r in recs] == [0, 1, 1, 2, 3, 4]
    # the LR in force at each step: a skipped step does not advance the schedule (cosine, no warmup)
    lrs = [r["lr"] for r in recs]
    assert lrs[1] == lrs[2] and lrs[3] == lrs[4] == lrs[5] and lrs[0] > lrs[1] > lrs[3]
    assert trainer.engine.global_steps - trainer.engine.skipped_steps == 2  # DeepSpeed agrees: 2 applied
    adam_steps = {float(s["step"]) for s in trainer.optimizer.state.values()}
    assert adam_steps == {2.0}
    # the saved state is the last good one: the model after step 3, untouched by the skipped steps
    from safetensors.torch import load_file
    saved = load_file(str(tmp_path / "run" / "checkpoints" / "step_00000006" / "model.safetensors"))
    assert saved.keys() == snap.state.keys()
    assert all(torch.equal(saved[k], snap.state[k].float()) for k in saved)


def test_bf16_zero1_accumulates_gradients_in_fp32(synthetic_data, tmp_path):
    """bf16 under ZeRO-1 sums micro-batch gradients in fp32 by default (DeepSpeed's BF16_Optimizer); an explicit
    data_types.grad_accum_dtype wins, and ZeRO-0 (where DeepSpeed refuses fp32 accumulation of bf16) keeps bf16."""
    import torch

    from neox.training.engine import deepspeed_config

    ds_bf16 = {"zero_optimization": {"stage": 1}, "bf16": {"enabled": True}}
    path = write_config(tmp_path / "c.yml", tiny_config(
        synthetic_data, tmp_path / "run", deepspeed=ds_bf16, schedule={"train_steps": 2, "warmup_steps": 0},
        eval={"at_start": False, "interval_steps": 0, "val_samples_per_domain": 4}))
    cpu = torch.device("cpu")
    ds = deepspeed_config(load_config(path), 1, cpu)
    assert ds["data_types"] == {"grad_accum_dtype": "fp32"} and ds["bf16"]["check_grad_overflow"] is True
    explicit = deepspeed_config(load_config(path, ["deepspeed.data_types.grad_accum_dtype=bf16"]), 1, cpu)
    assert explicit["data_types"] == {"grad_accum_dtype": "bf16"}
    assert "data_types" not in deepspeed_config(load_config(path, ["deepspeed.zero_optimization.stage=0"]), 1, cpu)

    trainer = train_in_process(path)
    engine = trainer.engine
    assert engine.get_data_types() == (torch.bfloat16, torch.float32)
    assert engine.optimizer.grad_acc_dtype == torch.float32
    assert all(g.dtype == torch.float32 for g in engine.optimizer.fp32_groups_gradient_flat_partition)
    assert next(engine.module.parameters()).dtype == torch.bfloat16
    assert all(math.isfinite(r["loss"]) for r in read_metrics(tmp_path / "run"))


def test_print_config_prints_both_configs_and_starts_nothing(tmp_path):
    """--print-config: the resolved config and the DeepSpeed config as one JSON object, exit 0, with data that
    does not exist (nothing is read) and no run directory created (nothing is started)."""
    run_dir = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yml", tiny_config(
        tmp_path / "no_such_data", run_dir, deepspeed={"zero_optimization": {"stage": 1}, "bf16": {"enabled": True}}))
    cmd = [sys.executable, str(ROOT / "train.py"), str(cfg), "schedule.train_steps=9", "--print-config"]
    proc = subprocess.run(cmd, cwd=ROOT, env=clean_env(WORLD_SIZE="2"), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["config"]["schedule"]["train_steps"] == 9 and out["world_size"] == 2
    ds = out["deepspeed"]
    assert ds["train_batch_size"] == 8 and ds["train_micro_batch_size_per_gpu"] == 2
    assert ds["gradient_accumulation_steps"] == 2  # 8 / (2 x 2 ranks)
    assert ds["data_types"] == {"grad_accum_dtype": "fp32"}
    assert not run_dir.exists()
    bad = subprocess.run(cmd, cwd=ROOT, env=clean_env(WORLD_SIZE="3"), capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().count("\n") == 0 and "global_batch_sequences (8) must be divisible" in bad.stderr


def test_doremi_with_a_reference_model(synthetic_data, tmp_path):
    """DoReMi reads a reference model from another run's checkpoint and is fed excess losses."""
    ref_dir = tmp_path / "reference"
    train_in_process(write_config(tmp_path / "ref.yml", tiny_config(synthetic_data, ref_dir)))
    run_dir = tmp_path / "doremi"
    cfg = tiny_config(synthetic_data, run_dir, mixing={"method": "doremi", "doremi": {"reference": str(ref_dir)}})
    trainer = train_in_process(write_config(tmp_path / "d.yml", cfg))
    statistics = trainer.mixing.statistics
    assert statistics.reference_model is not None and statistics.alignment is None
    recs = read_metrics(run_dir)
    w = np.array([[r[f"weights/domain_0{k}"] for k in range(3)] for r in recs])
    assert np.abs(w[-1] - w[0]).max() > 1e-3  # the excess losses moved the weights
    with pytest.raises(ConfigError, match="mixing.doremi.reference"):
        train_in_process(write_config(tmp_path / "e.yml", tiny_config(
            synthetic_data, tmp_path / "e", mixing={"method": "doremi"})))


def test_data_from_another_tokenizer_is_refused(synthetic_data, tmp_path):
    from neox.data import DataFileError

    other = tmp_path / "tokenizer.json"
    other.write_text("{}")  # any file whose sha256 differs from the manifest's (synthetic: none recorded)
    cfg = write_config(tmp_path / "c.yml", tiny_config(synthetic_data, tmp_path / "run", data={"tokenizer": str(other)}))
    with pytest.raises(DataFileError, match="tokenizer"):
        train_in_process(cfg)
    missing = write_config(tmp_path / "m.yml", tiny_config(synthetic_data, tmp_path / "run2",
                                                           data={"tokenizer": str(tmp_path / "nope.json")}))
    with pytest.raises(FileNotFoundError, match="data.tokenizer"):
        train_in_process(missing)
