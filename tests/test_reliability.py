"""Nothing lost, nothing hangs: DeepSpeed's op lock, verified checkpoints, clean interrupts, one metrics record
per step after a resume, config.yml kept on a refused resume, one-line user errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from distributed import free_port
from tests.trainer_utils import ROOT, clean_env, read_metrics, run_train, tiny_config, train_in_process, write_config

# ------------------------------------------------------------------------------------------ DeepSpeed's op lock


def test_stale_lock_is_removed(tmp_path, capsys):
    from neox.training.ds_ops import clear_stale_lock, wait_for_lock

    lock = tmp_path / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir()
    lock.touch()  # what a build killed mid-way leaves: the file, no process holding it
    assert clear_stale_lock(lock)
    assert not lock.exists() and "removed stale lock" in capsys.readouterr().err
    lock.touch()
    wait_for_lock(lock, wait_s=5)  # returns at once, removing it
    assert not lock.exists()


def test_live_lock_is_waited_for_then_a_clear_error(tmp_path):
    from neox.training.ds_ops import OpBuildError, clear_stale_lock, lock_holders, wait_for_lock

    lock = tmp_path / "lock"
    fd = os.open(lock, os.O_CREAT | os.O_EXCL)  # held the way torch's FileBaton holds it during a build
    try:
        assert os.getpid() in lock_holders(lock)
        assert not clear_stale_lock(lock)
        started = time.monotonic()
        with pytest.raises(OpBuildError, match=rf"{lock}.*held by process {os.getpid()}.*make setup"):
            wait_for_lock(lock, wait_s=0.5, poll_s=0.05)
        assert time.monotonic() - started < 5
    finally:
        os.close(fd)


def test_lock_of_a_build_that_dies_while_waited_for_is_removed(tmp_path):
    from neox.training.ds_ops import wait_for_lock

    lock = tmp_path / "lock"
    fd = os.open(lock, os.O_CREAT | os.O_EXCL)
    threading.Timer(0.3, os.close, args=(fd,)).start()  # the "build" dies without removing its lock
    wait_for_lock(lock, wait_s=30, poll_s=0.05)
    assert not lock.exists()


def test_a_poisoned_extensions_dir_does_not_hang_a_start(tmp_path):
    """A stale lock in TORCH_EXTENSIONS_DIR (a killed first compile): the next start removes it and comes up.
    Before the fix the op's load waited on the lock forever."""
    from neox.training.ds_ops import build_directory, ensure_shm_op

    ensure_shm_op()  # built once (make setup / the session start did it already)
    poisoned = tmp_path / "torch_extensions"
    shutil.copytree(build_directory(), poisoned / "deepspeed_shm_comm")
    (poisoned / "deepspeed_shm_comm" / "lock").touch()
    code = "from neox.training.distributed import init_distributed; init_distributed('cpu'); print('up')"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=clean_env(TORCH_EXTENSIONS_DIR=str(poisoned)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "up" in proc.stdout and "removed stale lock" in proc.stderr
    assert not (poisoned / "deepspeed_shm_comm" / "lock").exists()


def test_hash_based_ports_are_gone():
    source = (ROOT / "tests" / "test_trainer.py").read_text()
    assert "hash(str(tmp_path))" not in source and "pytest.skip" not in source


# ------------------------------------------------------------------------------------------ verified checkpoints

BASE = dict(mixing={"method": "odm"}, schedule={"train_steps": 4, "warmup_steps": 1},
            checkpoint={"interval_steps": 2, "keep_last": 0},
            eval={"interval_steps": 0, "at_start": False, "val_samples_per_domain": 4})


@pytest.fixture(scope="module")
def run4(synthetic_data, tmp_path_factory):
    """One process, 4 steps, checkpoints at 2 and 4."""
    root = tmp_path_factory.mktemp("run4")
    cfg = write_config(root / "c.yml", tiny_config(synthetic_data, root / "run", **BASE))
    train_in_process(cfg)
    return root / "run", cfg


def _damage(path: Path, how: str) -> None:
    if how == "delete":
        path.unlink()
    elif how == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:  # one byte flipped, same size: only the checksum sees it
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))


def _parts(ckpt: Path) -> list[str]:
    return sorted(json.loads((ckpt / "manifest.json").read_text())["files"]) + ["manifest.json"]


def _check_every_part(run: Path, tmp_path: Path) -> int:
    """Damage each file of the latest checkpoint in turn: resolution falls back to the previous one, naming the
    damaged checkpoint and file; the previous one is never deleted by cleanup."""
    from neox.training.checkpoint import _prune, resolve_checkpoint, verify_checkpoint

    latest = run / "checkpoints" / "step_00000004"
    assert verify_checkpoint(latest) is None and verify_checkpoint(run / "checkpoints" / "step_00000002") is None
    checked = 0
    for i, part in enumerate(_parts(latest)):
        for how in ("delete", "truncate", "flip"):
            if part == "manifest.json" and how != "delete":
                continue
            copy = tmp_path / f"c{i}_{how}"
            shutil.copytree(run, copy)
            _damage(copy / "checkpoints" / "step_00000004" / part, how)
            messages: list[str] = []
            assert resolve_checkpoint(copy, log=messages.append).name == "step_00000002", (part, how)
            assert len(messages) == 1 and "step_00000004" in messages[0], messages
            assert (part if part != "manifest.json" else "manifest.json") in messages[0], (part, messages)
            _prune(copy / "checkpoints", keep_last=1)  # keep-last-1 must not delete the only verified one
            assert (copy / "checkpoints" / "step_00000002").is_dir()
            checked += 1
    return checked


def test_every_damaged_part_is_detected_pipe1(run4, tmp_path):
    run, _ = run4
    parts = _parts(run / "checkpoints" / "step_00000004")
    assert {"model.safetensors", "trainer.json", "data.json", "config.yml"} <= set(parts)
    assert any(p.startswith("deepspeed/") for p in parts) and any(p.startswith("mixer/") for p in parts)
    assert _check_every_part(run, tmp_path) == 3 * (len(parts) - 1) + 1


def test_damaged_latest_resumes_from_the_verified_one(run4, tmp_path, capfd):
    """The issue's case: model.safetensors of the latest checkpoint truncated. The run resumes from the previous
    checkpoint (one line), ends like an uninterrupted run, and every checkpoint left verifies."""
    from neox.training.checkpoint import verify_checkpoint

    run, cfg = run4
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    _damage(resumed / "checkpoints" / "step_00000004" / "model.safetensors", "truncate")
    train_in_process(cfg, f"logging.run_dir={resumed}", "checkpoint.resume=auto", "checkpoint.keep_last=1")
    err = capfd.readouterr().err
    assert "step_00000004 is damaged (model.safetensors has" in err and "resumed from" in err
    assert [r["loss"] for r in read_metrics(resumed)] == [r["loss"] for r in read_metrics(run)]
    left = sorted(p.name for p in (resumed / "checkpoints").glob("step_*"))
    assert left == ["step_00000004"] and verify_checkpoint(resumed / "checkpoints" / left[0]) is None


def test_no_verified_checkpoint_is_a_one_line_error(run4, tmp_path):
    run, cfg = run4
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    for step in (2, 4):
        _damage(broken / "checkpoints" / f"step_{step:08d}" / "trainer.json", "truncate")
    proc = run_train(cfg, f"logging.run_dir={broken}", "checkpoint.resume=auto", check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "no checkpoint under" in proc.stderr.splitlines()[-1]


def test_convert_names_the_damaged_checkpoint(run4, tmp_path):
    from neox.hf_export import ExportError, resolve_checkpoint

    run, _ = run4
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    _damage(broken / "checkpoints" / "step_00000004" / "model.safetensors", "truncate")
    with pytest.raises(ExportError, match="step_00000004 is damaged: model.safetensors has"):
        resolve_checkpoint(broken / "checkpoints" / "step_00000004")


def _torchrun(nproc: int) -> tuple[str, ...]:
    return (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_port", str(free_port()))


@pytest.fixture(scope="module")
def run4_pipe2(synthetic_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("run4pp")
    cfg = write_config(root / "c.yml", tiny_config(synthetic_data, root / "run", parallel={"pipe": 2}, **BASE))
    run_train(cfg, launcher=_torchrun(2), timeout=400)
    return root / "run", cfg


def test_every_damaged_part_is_detected_pipe2(run4_pipe2, tmp_path):
    run, cfg = run4_pipe2
    parts = _parts(run / "checkpoints" / "step_00000004")
    assert sum(p.startswith("deepspeed/layer_") for p in parts) >= 2  # both stages' layer files are listed
    _check_every_part(run, tmp_path)
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    _damage(resumed / "checkpoints" / "step_00000004" / sorted(p for p in parts if "layer_" in p)[-1], "truncate")
    proc = run_train(cfg, f"logging.run_dir={resumed}", "checkpoint.resume=auto", launcher=_torchrun(2), timeout=400)
    assert proc.stderr.count("is damaged") == 1 and "step_00000002" in proc.stderr
    np.testing.assert_allclose([r["loss"] for r in read_metrics(resumed)], [r["loss"] for r in read_metrics(run)],
                               rtol=1e-9)


# ------------------------------------------------------------------------------------------ resume bookkeeping


def test_resume_drops_repeated_records_and_marks_the_resume(run4, tmp_path):
    """Killed at step 3 after checkpoint 2 (metrics hold steps 1-3, the last line torn): the resumed run's
    metrics.jsonl has one record per step and a resume record; the dropped ones are kept aside."""
    run, cfg = run4
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_00000004")
    (resumed / "checkpoints" / "latest").write_text("step_00000002\n")
    lines = [ln for ln in (resumed / "metrics.jsonl").read_text().splitlines() if json.loads(ln).get("step", 0) <= 3]
    (resumed / "metrics.jsonl").write_text("\n".join(lines) + "\n" + lines[-1][:25])  # torn last write
    train_in_process(cfg, f"logging.run_dir={resumed}", "checkpoint.resume=auto")
    records = [json.loads(ln) for ln in (resumed / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if r["kind"] == "train"]
    assert train_steps == [1, 2, 3, 4]
    resume = [r for r in records if r["kind"] == "resume"]
    assert len(resume) == 1 and resume[0]["step"] == 2 and resume[0]["dropped_records"] == 2
    assert [r["loss"] for r in records if r["kind"] == "train"] == [r["loss"] for r in read_metrics(run)]
    assert len((resumed / "metrics.replaced.jsonl").read_text().splitlines()) == 2


def test_tensorboard_purges_steps_after_the_checkpoint(tmp_path):
    from neox.config import LoggingConfig
    from neox.training.metrics import MetricsWriter

    writer = MetricsWriter(tmp_path, LoggingConfig(tensorboard=True, progress_bar=False), {}, resume_step=5)
    writer.close()
    events = list((tmp_path / "tensorboard").glob("events.*"))
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    sessions = [e for f in events for e in EventFileLoader(str(f)).Load() if e.HasField("session_log")]
    assert any(e.session_log.status == e.session_log.START and e.step == 6 for e in sessions)


def test_refused_resume_keeps_config_yml(run4, tmp_path):
    from neox.errors import ConfigError

    run, cfg = run4
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    before = (copy / "config.yml").read_bytes()
    with pytest.raises(ConfigError, match="parallel.pipe"):
        train_in_process(cfg, f"logging.run_dir={copy}", "checkpoint.resume=auto", "parallel.pipe=2",
                         "model.num_layers=2")
    assert (copy / "config.yml").read_bytes() == before


def test_changed_settings_are_listed_and_train_steps_follows_the_new_schedule(run4, tmp_path, capfd):
    from neox.training.schedule import lr_at

    run, cfg = run4
    longer = tmp_path / "longer"
    shutil.copytree(run, longer)
    train_in_process(cfg, f"logging.run_dir={longer}", "checkpoint.resume=auto", "schedule.train_steps=8",
                     "optimizer.lr=0.002")
    err = capfd.readouterr().err
    assert "changed setting: optimizer.lr: 0.003 -> 0.002" in err
    assert "changed setting: schedule.train_steps: 4 -> 8" in err and "recomputed" in err
    assert yaml.safe_load((longer / "config.yml").read_text())["schedule"]["train_steps"] == 8
    recs = read_metrics(longer)
    assert [r["step"] for r in recs] == list(range(1, 9))
    # steps 5..8 take the new schedule's LR at their step (0-based step s-1), from the first resumed step on
    for r in recs[4:]:
        expected = lr_at(r["step"] - 1, lr=0.002, min_lr=3e-4, warmup_steps=1, total_steps=8, decay="cosine")
        assert r["lr"] == pytest.approx(expected, rel=1e-12), r["step"]


# ------------------------------------------------------------------------------------------ interrupts


def _signal_when(proc: subprocess.Popen, metrics: Path, step: int, signum: int, deadline_s: float = 400) -> None:
    """Send ``signum`` once metrics.jsonl holds train step ``step``. The deadline is the start-up's (the same as
    the other launches' here: a 2-process start on a busy 2-core machine takes minutes)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and f'"step": {step},' in metrics.read_text() and '"kind": "train", "step": ' \
                f'{step},' in metrics.read_text():
            proc.send_signal(signum)
            return
        time.sleep(0.05)
    raise AssertionError(f"the run ended or stalled before step {step}")


@pytest.mark.parametrize("nproc,signum", [(1, signal.SIGINT), (1, signal.SIGTERM), (2, signal.SIGINT),
                                          (2, signal.SIGTERM)])
def test_signal_finishes_the_step_saves_and_exits(synthetic_data, tmp_path, nproc, signum):
    """SIGINT/SIGTERM mid-run: the current step finishes, a checkpoint of it is saved, one line, non-zero exit;
    resuming ends exactly like the uninterrupted run. 2 processes: the signal goes to torchrun, which forwards
    it to both ranks and SIGKILLs any that has not exited 30 s later: both must be gone by then, on their own."""
    base = dict(mixing={"method": "odm"}, schedule={"train_steps": 12, "warmup_steps": 1},
                checkpoint={"interval_steps": 0, "keep_last": 2},
                eval={"interval_steps": 0, "at_start": False, "val_samples_per_domain": 4})
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yml", tiny_config(synthetic_data, run, **base))
    launcher = [sys.executable] if nproc == 1 else list(_torchrun(nproc))
    proc = subprocess.Popen([*launcher, str(ROOT / "train.py"), str(cfg)], cwd=ROOT, env=clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _signal_when(proc, run / "metrics.jsonl", 3, signum)
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:  # a failed wait: leave no run (and no ranks) behind to load the machine
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    name = signal.Signals(signum).name
    assert proc.returncode != 0, err[-2000:]
    if nproc == 1:
        assert proc.returncode == 128 + signum
    else:  # torchrun's agent: "Unable to shutdown process N via 2, forcefully exiting via 9"
        assert "forcefully exiting" not in err and "Unable to shutdown" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("stopped by")]
    assert len(lines) == 1 and name in lines[0] and "checkpoint.resume=auto" in lines[0], err[-3000:]
    # no traceback through our code (torchrun's agent prints its own when it forwards a signal)
    ours = (f'File "{ROOT}/train.py', f'File "{ROOT}/neox/')
    assert not any(o in err for o in ours) and "KeyboardInterrupt" not in err, err[-3000:]
    if nproc == 1:
        assert "Traceback" not in err
    saved = int((run / "checkpoints" / "latest").read_text().strip().split("_")[1])
    steps = [r["step"] for r in read_metrics(run)]
    assert 3 <= saved < 12 and steps == list(range(1, saved + 1))  # nothing trained after the checkpoint is lost
    launcher_args = (sys.executable,) if nproc == 1 else _torchrun(nproc)
    run_train(cfg, "checkpoint.resume=auto", launcher=launcher_args, timeout=400)
    reference = tmp_path / "reference"
    run_train(write_config(tmp_path / "r.yml", tiny_config(synthetic_data, reference, **base)),
              launcher=(sys.executable,) if nproc == 1 else _torchrun(nproc), timeout=400)
    np.testing.assert_allclose([r["loss"] for r in read_metrics(run)], [r["loss"] for r in read_metrics(reference)],
                               rtol=0 if nproc == 1 else 1e-9)


def test_second_ctrl_c_exits_at_once(synthetic_data, tmp_path):
    from neox.training.signals import StopSignals

    code = ("import os, signal, time\n"
            "from neox.training.signals import StopSignals\n"
            "with StopSignals(same_press_s=0.2) as s:\n"
            "    os.kill(os.getpid(), signal.SIGINT); time.sleep(0.5)\n"
            "    assert s.signum == signal.SIGINT\n"
            "    os.kill(os.getpid(), signal.SIGINT); time.sleep(30)\n"
            "print('not reached')\n")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=clean_env(), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 130 and time.monotonic() - started < 20
    assert "not reached" not in proc.stdout and "second Ctrl-C" in proc.stderr
    assert StopSignals  # the class under test is importable without torch.distributed being up


# ------------------------------------------------------------------------------------------ start-up and outputs


def test_user_errors_at_start_up_are_one_line_with_exit_2(synthetic_data, tmp_path):
    other = tmp_path / "tokenizer.json"
    other.write_text("{}")  # not the tokenizer the data came from
    cfg = write_config(tmp_path / "c.yml", tiny_config(synthetic_data, tmp_path / "run", data={"tokenizer": str(other)}))
    proc = run_train(cfg, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "tokenizer" in proc.stderr.splitlines()[-1]
    proc = run_train(cfg, "mixing.method=acodm_frozen", f"mixing.acodm_frozen.actor={tmp_path / 'no_actor'}",
                     "data.tokenizer=null", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "no_actor" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("pythia_*.yml")))
def test_model_info_follows_include(config, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("model_info", ROOT / "tools" / "model_info.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main([str(ROOT / "configs" / config)]) == 0
    assert int(capsys.readouterr().out.split("total_params: ")[1].split()[0]) > 1_000_000


def test_checkpoints_respect_the_umask(run4):
    from neox.permissions import current_umask

    run, _ = run4
    mask = current_umask()
    wrong = [f"{oct(p.stat().st_mode & 0o777)} {p}" for p in (run / "checkpoints").rglob("*")
             if p.stat().st_mode & 0o777 not in ((0o777 if p.is_dir() else 0o666) & ~mask, 0o777 & ~mask)]
    assert not wrong, wrong  # before: mixer/ 0700, model.safetensors 0600 whatever the umask


def test_preprocess_clears_leftovers_and_respects_the_umask(tmp_path):
    import warnings

    from tests.synthetic_data import write_synthetic_domains

    out = tmp_path / "tokens"
    (tmp_path / "tokens.tmp-dead1").mkdir()  # what a SIGKILLed run leaves
    (tmp_path / "tokens.tmp-dead1" / "half.bin").write_bytes(b"x")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_synthetic_domains(str(out), num_domains=2, docs_per_domain=10, vocab_size=64, seed=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokens"]
    from neox.permissions import current_umask

    assert out.stat().st_mode & 0o777 == 0o777 & ~current_umask()


def test_two_rank_cpu_run_leaves_nothing_in_dev_shm(synthetic_data, tmp_path, monkeypatch):
    port = free_port()
    # The op makes its buffers when the process group comes up: one step is enough, without evaluations or a
    # checkpoint (four Python processes start here, which is most of the cost on a busy machine).
    cfg = write_config(tmp_path / "c.yml", tiny_config(
        synthetic_data, tmp_path / "run", schedule={"train_steps": 1, "warmup_steps": 0},
        eval={"interval_steps": 0, "at_start": False, "val_samples_per_domain": 1},
        checkpoint={"interval_steps": 0, "save_final": False}))
    # Unlike torchrun, the deepspeed launcher leaves OMP_NUM_THREADS alone: two ranks x the cores' OpenMP threads
    # spin-waiting for CPU time the machine's other jobs hold would make this slow under load.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    pattern = f"deepspeed_allreduce_buffer_*_{port}_*"
    seen: set[str] = set()
    done = threading.Event()

    def watch() -> None:  # the buffers exist while the ranks run: the check below is not vacuous
        while not done.wait(0.05):
            seen.update(p.name for p in Path("/dev/shm").glob(pattern))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        # the deepspeed launcher sets LOCAL_SIZE, which makes the op use its shared-memory all-reduce buffers
        run_train(cfg, launcher=(sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2",
                                 "--master_port", str(port)))
    finally:
        done.set()
        watcher.join()
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1]
    assert len(seen) == 2, seen  # one per rank
    left = [p.name for p in Path("/dev/shm").glob(pattern)]
    assert not left, left
