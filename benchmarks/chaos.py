"""Chaos: one training run stopped again and again, then compared with the same run left alone.

A run of train.py is interrupted ``--interrupts`` times: SIGINT, SIGTERM or SIGKILL, during start-up, between
steps or while a checkpoint is being written (the harness polls for ``step_*.tmp`` and kills then). Between
some restarts one file of the newest verified checkpoint is truncated or deleted, each top-level part of the
checkpoint in turn. Every restart is ``checkpoint.resume=auto``. When the run has finished it is compared with
an uninterrupted run of the same config: every train record's numbers (tokens/s aside), the final weights,
one train record per step in metrics.jsonl, and every checkpoint left verifies against its manifest.

On one CPU process a resumed run is bitwise the uninterrupted one (same kernels, same order, the RNG states
restored), so losses are compared exactly and weights are reported bitwise or by their largest difference.

    python benchmarks/chaos.py --interrupts 20 --steps 200 --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from neox.training.checkpoint import (LATEST, MANIFEST, checkpoint_name, complete_checkpoints,  # noqa: E402
                                      newest_verified, verify_checkpoint)

SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}
WHEN = ("startup", "step", "write")
LAUNCH_TIMEOUT_S = 900.0  # one launch of train.py; a hang is a failure, not a wait
WRITE_ATTEMPTS = 6  # a kill aimed at a checkpoint write that lands after the rename is retried this often
# Environment variables of a torchrun/deepspeed rank: a child started from inside one must not join its job.
RANK_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")


# ------------------------------------------------------------------------------------------ the run


def chaos_config(data_dir: Path, run_dir: Path, steps: int, interval_steps: int, size: str = "bench",
                 seed: int = 7) -> dict[str, Any]:
    """ODM mixing (a mixer with state of its own) on synthetic domains. ``size``: "bench", a 4 x 128 model
    whose 200 steps take a minute or two on a busy CPU and whose checkpoint writes last ~0.1 s; "small", the
    tests' 2 x 64 model."""
    model = {"num_layers": 4, "hidden_size": 128, "num_heads": 4, "vocab_size": 256, "max_seq_len_tokens": 64}
    data = {"path": str(data_dir), "seq_len_tokens": 64, "global_batch_sequences": 16, "micro_batch_sequences": 4}
    if size == "small":
        model.update(num_layers=2, hidden_size=64)
        data.update(seq_len_tokens=32, global_batch_sequences=8, micro_batch_sequences=2)
    elif size != "bench":
        raise ValueError(f"size must be 'bench' or 'small', got {size!r}")
    return {
        "name": "chaos", "seed": seed, "device": "cpu", "model": model, "data": data,
        "optimizer": {"lr": 3e-3, "min_lr": 3e-4},
        "schedule": {"train_steps": steps, "warmup_steps": max(1, steps // 40)},
        "mixing": {"method": "odm"},
        "checkpoint": {"interval_steps": interval_steps, "keep_last": 2},
        "logging": {"run_dir": str(run_dir), "tensorboard": False, "progress_bar": False,
                    "log_interval_steps": 10},
        "eval": {"interval_steps": max(1, steps // 4), "at_start": True, "val_samples_per_domain": 4},
        "deepspeed": {"zero_optimization": {"stage": 1}},
    }


def make_synthetic_data(out: Path) -> Path:
    from tests.synthetic_data import write_synthetic_domains

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_synthetic_domains(str(out), num_domains=3, docs_per_domain=120, vocab_size=256, seed=0)
    return out


# ------------------------------------------------------------------------------------------ plans and rows


@dataclass
class Interrupt:
    signal: str  # a key of SIGNALS
    when: str  # one of WHEN
    corrupt: bool = False  # damage the newest verified checkpoint before the restart


@dataclass
class Row:
    """One delivered interrupt and what the restart after it made of it."""
    signal: str
    when: str
    at: str = ""  # where the run was when it stopped
    exit: str = ""
    corruption: str = "-"
    expected: int | None = None  # the step the restart must resume from (0: a fresh start)
    resumed: str = ""
    survived: bool = False
    notes: list[str] = field(default_factory=list)


def plan_interrupts(rng: random.Random, count: int, corrupt_share: float = 0.5) -> list[Interrupt]:
    """``count`` interrupts with random signals and moments; at least one of each signal and one kill during a
    checkpoint write when ``count`` allows."""
    plan = [Interrupt(rng.choice(list(SIGNALS)), rng.choices(WHEN, weights=(1, 6, 3))[0],
                      rng.random() < corrupt_share) for _ in range(count)]
    must = [Interrupt("SIGINT", "step"), Interrupt("SIGTERM", "step"), Interrupt("SIGKILL", "write")]
    for i, it in enumerate(must[:count]):
        plan[i].signal, plan[i].when = it.signal, it.when
    rng.shuffle(plan)
    return plan


# ------------------------------------------------------------------------------------------ watching a launch


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's records; a torn last line (a kill mid-write) is left out."""
    path = run_dir / "metrics.jsonl"
    out = []
    for line in (path.read_text().splitlines() if path.exists() else []):
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


class Launch:
    """One ``train.py CONFIG checkpoint.resume=auto`` with its output in ``log``.

    The launch's own lines say where it stands: "resumed from CKPT at step N" (none on a fresh start), then
    the run's summary line "NAME: ...-parameter model" once it is about to train. metrics.jsonl cannot say it:
    a resume drops the records of the steps it will train again, earlier resume records among them."""

    def __init__(self, config: Path, run_dir: Path, name: str, log: Path, env: dict[str, str]) -> None:
        self.run_dir, self.log = run_dir, log
        self._summary = f"{name}: "
        self._out = log.open("w")
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), str(config), "checkpoint.resume=auto"],
                                     cwd=ROOT, env=env, stdout=self._out, stderr=subprocess.STDOUT)
        self.started_at = time.monotonic()
        self._resume_step: int | None = None
        self._started = False
        self._size = -1
        self._records: list[dict[str, Any]] = []

    def _read_log(self) -> None:
        if self._started:
            return
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("resumed from ") and " at step " in line:
                self._resume_step = int(line.rsplit(" ", 1)[1])
            elif line.startswith(self._summary) and "-parameter model" in line:
                self._started = True

    def started(self) -> bool:
        """This launch has resumed (or started afresh) and is about to train."""
        self._read_log()
        return self._started

    def resume_step(self) -> int | None:
        """The step this launch resumed from (0: a fresh start); None before it has started."""
        return (self._resume_step or 0) if self.started() else None

    def records(self) -> list[dict[str, Any]]:
        path = self.run_dir / "metrics.jsonl"
        size = path.stat().st_size if path.exists() else 0
        if size != self._size:
            self._size, self._records = size, read_records(self.run_dir)
        return self._records

    def last_step(self) -> int | None:
        """The last train step this launch recorded (None before its first)."""
        start = self.resume_step()
        if start is None:
            return None
        steps = [r["step"] for r in self.records() if r.get("kind") == "train"]
        return steps[-1] if steps and steps[-1] > start else None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def overdue(self) -> bool:
        return time.monotonic() - self.started_at > LAUNCH_TIMEOUT_S

    def wait(self) -> int:
        try:
            rc = self.proc.wait(timeout=max(1.0, LAUNCH_TIMEOUT_S - (time.monotonic() - self.started_at)))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
            self._out.write(f"\n[chaos] killed: no exit within {LAUNCH_TIMEOUT_S:.0f} s\n")
        self._out.close()
        return rc

    def tail(self, lines: int = 3) -> str:
        return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-lines:])


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every launch, the uninterrupted one's included: no rank variables (a child of a
    torchrun rank must not join its job) and one intra-op thread unless set (a tiny model on a shared CPU runs
    faster so; the same for both runs, as bitwise equality needs)."""
    env = {k: v for k, v in (os.environ if env is None else env).items() if k not in RANK_ENV}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_uninterrupted(config: Path, env: dict[str, str] | None = None) -> None:
    """``config`` from start to end, its output in launch.log beside the config."""
    cfg = yaml.safe_load(Path(config).read_text())
    launch = Launch(config, Path(cfg["logging"]["run_dir"]), cfg["name"], Path(config).parent / "launch.log",
                    child_env(env))
    rc = launch.wait()
    if rc != 0:
        raise RuntimeError(f"the uninterrupted run exited with {_exit_name(rc)}: {launch.tail()}")


def _wait_for_step(launch: Launch, step: int) -> bool:
    """True once the launch has recorded train step ``step``; False if it exits or hangs first."""
    while launch.alive() and not launch.overdue():
        last = launch.last_step()
        if last is not None and last >= step:
            return True
        time.sleep(0.005)
    return False


def _writing(root: Path) -> str | None:
    try:
        return next((e.name for e in os.scandir(root) if e.name.startswith("step_") and e.name.endswith(".tmp")),
                    None)
    except FileNotFoundError:
        return None


def _kill_during_write(launch: Launch, root: Path, signum: int, delay_s: float) -> tuple[str, bool] | None:
    """Send ``signum`` ``delay_s`` after a ``step_*.tmp`` appears: the name seen and whether it was still there
    right after the signal went (None: the run ended first)."""
    while launch.alive() and not launch.overdue():
        name = _writing(root)
        if name is not None:
            if delay_s:
                time.sleep(delay_s)
            launch.proc.send_signal(signum)
            return name, (root / name).exists()
        time.sleep(0.001)
    return None


# ------------------------------------------------------------------------------------------ corruption


def checkpoint_parts(ckpt: Path) -> list[str]:
    """The top-level entries of a checkpoint (deepspeed/, model.safetensors, ..., manifest.json)."""
    return sorted(p.name for p in ckpt.iterdir())


def corrupt(ckpt: Path, part: str, rng: random.Random) -> str:
    """Truncate or delete one file of ``part``; returns what was done."""
    target = ckpt / part
    if target.is_dir():
        target = rng.choice(sorted(p for p in target.rglob("*") if p.is_file()))
    how = rng.choice(("truncate", "delete"))
    if how == "delete":
        target.unlink()
    else:
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2])
    return f"{how} {target.relative_to(ckpt).as_posix()} of {ckpt.name}"


def _verified(root: Path) -> list[Path]:
    return [c for c in complete_checkpoints(root) if verify_checkpoint(c) is None]


def _step_of(ckpt: Path | None) -> int:
    return 0 if ckpt is None else int(ckpt.name.split("_")[1])


# ------------------------------------------------------------------------------------------ the chaos loop


def run_chaos(config: Path, plan: list[Interrupt], rng: random.Random, env: dict[str, str] | None = None,
              say=print) -> list[Row]:
    """Run ``config`` to its end through the interrupts of ``plan``; one Row per delivered interrupt. A kill
    aimed at a checkpoint write that lands after the write completed is a row of its own and is tried again
    (at most WRITE_ATTEMPTS times in a row). Raises RuntimeError(message, rows) when a restart does not
    recover or the interrupts cannot be delivered."""
    cfg = yaml.safe_load(Path(config).read_text())
    run_dir, steps = Path(cfg["logging"]["run_dir"]), cfg["schedule"]["train_steps"]
    root = run_dir / "checkpoints"
    env = child_env(env)
    parts: list[str] = []  # corruption targets: every part once before any twice
    rows: list[Row] = []
    unsettled: list[Row] = []  # rows whose restart has not yet resumed (a restart stopped during start-up)
    pending = list(plan)
    write_misses = 0
    owed = False  # a corruption put off until two verified checkpoints exist
    while True:
        launch = Launch(config, run_dir, cfg["name"], run_dir.parent / f"launch_{len(rows) + 1:02d}.log", env)
        it = pending[0] if pending else None
        landed_in = _deliver(launch, it, len(pending), steps, root, rng, early=write_misses > 0) if it else None
        rc = launch.wait()
        if launch.started() and unsettled:
            _settle(unsettled, launch.resume_step())
            unsettled = []
        elif unsettled and (it is None or it.when != "startup"):
            _settle(unsettled, None, f"failed to start (exit {_exit_name(rc)}): {launch.tail(2)}")
        failed = [r for r in rows if r.resumed and not r.survived]
        if failed:
            raise RuntimeError(f"the restart after interrupt {rows.index(failed[0]) + 1} did not recover", rows)
        if it is None or rc == 0:
            if rc != 0:
                raise RuntimeError(f"the last launch exited with {_exit_name(rc)}: {launch.tail()}", rows)
            if it is not None:
                raise RuntimeError(f"the run ended before interrupt {len(rows) + 1} ({it.signal} at {it.when}) "
                                   f"was delivered", rows)
            return rows
        last = launch.last_step()
        row = Row(it.signal, it.when, exit=_exit_name(rc))
        row.at = "start-up" if last is None else f"step {last}"
        if landed_in is not None:
            name, there = landed_in
            # SIGINT/SIGTERM let the write finish (and the stop saves nothing more); a SIGKILL leaves the .tmp
            if there and (it.signal != "SIGKILL" or (root / name).exists()):
                row.at = f"writing {name.removesuffix('.tmp')}"
            else:  # the rename came first: a kill right after a write, and the write kill is tried again
                row.at += f" ({name.removesuffix('.tmp')} already written)"
                write_misses += 1
                if write_misses >= WRITE_ATTEMPTS:
                    rows.append(row)
                    raise RuntimeError(f"{WRITE_ATTEMPTS} kills aimed at a checkpoint write in a row all "
                                       f"came after the write", rows)
        if landed_in is None or row.at.startswith("writing"):
            pending.pop(0)
            write_misses = 0
        _check_stop(row, rc, SIGNALS[it.signal], last, root)
        owed = owed or it.corrupt
        if owed:
            verified = _verified(root)
            if len(verified) >= 2:  # one must stay usable, or by design there is nothing to resume from
                if not parts:
                    parts = checkpoint_parts(verified[-1])
                    rng.shuffle(parts)
                row.corruption, owed = corrupt(verified[-1], parts.pop(), rng), False
            else:
                row.corruption = "put off (fewer than 2 verified checkpoints)"
        row.expected = _step_of(newest_verified(root, log=lambda _msg: None))
        rows.append(row)
        unsettled.append(row)
        say(f"  interrupt {len(rows)}: {row.signal} at {row.at}, exit {row.exit}, corruption: {row.corruption}")


def _deliver(launch: Launch, it: Interrupt, remaining: int, steps: int, root: Path, rng: random.Random,
             early: bool) -> tuple[str, bool] | None:
    """Send the interrupt at a random moment of its kind; for a write, the ``step_*.tmp`` it was aimed at."""
    signum = SIGNALS[it.signal]
    if it.when == "startup":
        # train.py's start-up (imports, DeepSpeed, the resume) takes seconds: a random moment inside it
        time.sleep(max(0.0, rng.uniform(0.3, 5.0) - (time.monotonic() - launch.started_at)))
        if launch.alive():
            launch.proc.send_signal(signum)
        return None
    while launch.alive() and not launch.started() and not launch.overdue():
        time.sleep(0.01)
    start = launch.resume_step() or 0
    # Spread the interrupts over what is left of the run, clear of its end (a stop after the last step's
    # stop check would find a finished run).
    span = max(1, 2 * (steps - start) // (remaining + 1))
    target = min(steps - max(1, steps // 8), start + rng.randint(1, span))
    if not _wait_for_step(launch, max(target, start + 1)):
        return None
    if it.when == "step":
        time.sleep(rng.uniform(0.0, 0.02))  # anywhere inside a step
        launch.proc.send_signal(signum)
        return None
    return _kill_during_write(launch, root, signum, 0.0 if early else rng.uniform(0.0, 0.03))


def _exit_name(rc: int) -> str:
    return signal.Signals(-rc).name if rc < 0 else str(rc)


def _check_stop(row: Row, rc: int, signum: int, last: int | None, root: Path) -> None:
    """SIGINT/SIGTERM after the first step: exit 128+signal, with a verified checkpoint of the last step named
    by ``latest``. Before it (start-up), any exit short of a crash."""
    if signum == signal.SIGKILL:
        if rc != -signal.SIGKILL:
            row.notes.append(f"expected SIGKILL's exit, got {_exit_name(rc)}")
        return
    if last is None or row.at == "start-up":
        if rc not in (128 + signum, -signum):
            row.notes.append(f"start-up stop exited {_exit_name(rc)}")
        return
    if rc != 128 + signum:
        row.notes.append(f"expected exit {128 + signum}, got {_exit_name(rc)}")
    saved = root / checkpoint_name(last)
    latest = (root / LATEST).read_text().strip() if (root / LATEST).is_file() else None
    if verify_checkpoint(saved) is not None or latest != saved.name:
        row.notes.append(f"no verified {saved.name} named by latest after a graceful stop")


def _settle(rows: list[Row], resumed: int | None, failure: str = "") -> None:
    """The restart after ``rows`` (several when restarts were stopped during start-up) resumed from step
    ``resumed`` (0: a fresh start; None: it never got that far). It had to resume from the newest verified
    checkpoint as the last of them left it (a fresh start if none)."""
    expected = rows[-1].expected
    for row in rows:
        if resumed is None:
            row.resumed = failure
            continue
        row.resumed = f"step {resumed}" if resumed else "fresh start"
        if resumed != expected:
            row.notes.append(f"expected to resume from step {expected}")
        row.survived = not row.notes


# ------------------------------------------------------------------------------------------ comparison


@dataclass
class Comparison:
    losses_equal: bool
    weights_max_diff: float
    weights_bitwise: bool
    one_record_per_step: bool
    checkpoints_verified: int
    checkpoints: int
    notes: list[str]

    @property
    def final_equal(self) -> bool:
        return self.losses_equal and self.weights_max_diff <= 1e-6


def compare_runs(reference: Path, chaos: Path, steps: int) -> Comparison:
    """Every train record's numbers (tokens/s aside), the final weights, one train record per step and
    verified checkpoints of ``chaos`` against the uninterrupted ``reference``."""
    import torch
    from safetensors.torch import load_file

    notes = []
    ref = [r for r in read_records(reference) if r.get("kind") == "train"]
    got = [r for r in read_records(chaos) if r.get("kind") == "train"]
    chaos_steps = [r["step"] for r in got]
    one_per_step = chaos_steps == list(range(1, steps + 1))
    if not one_per_step:
        notes.append(f"train steps in metrics.jsonl: {len(chaos_steps)} records, {len(set(chaos_steps))} distinct")

    def numbers(r):
        return {k: v for k, v in r.items() if k != "tokens_per_s"}

    by_step = {r["step"]: r for r in got}
    differing = [r["step"] for r in ref if numbers(by_step.get(r["step"], {})) != numbers(r)]
    if differing:
        notes.append(f"train records differ at steps {differing[:10]}{' ...' if len(differing) > 10 else ''}")
    losses_equal = len(ref) == steps and not differing
    final = checkpoint_name(steps)
    a = load_file(str(reference / "checkpoints" / final / "model.safetensors"))
    b = load_file(str(chaos / "checkpoints" / final / "model.safetensors"))
    if a.keys() != b.keys():
        notes.append("the final weights have different tensors")
        max_diff, bitwise = float("inf"), False
    else:
        max_diff = max(float((a[k] - b[k]).abs().max()) for k in a)
        bitwise = all(torch.equal(a[k], b[k]) for k in a)
    left = complete_checkpoints(chaos / "checkpoints")
    bad = [(c.name, verify_checkpoint(c)) for c in left if verify_checkpoint(c) is not None]
    notes += [f"{name} does not verify: {why}" for name, why in bad]
    return Comparison(losses_equal, max_diff, bitwise, one_per_step, len(left) - len(bad), len(left), notes)


# ------------------------------------------------------------------------------------------ report


def table(rows: list[Row]) -> str:
    head = ("#", "signal", "when", "stopped at", "exit", "corruption before restart", "resumed from", "outcome")
    body = [(str(i), r.signal, r.when, r.at, r.exit, r.corruption, r.resumed,
             ("survived" if r.survived else "FAILED") + (f" ({'; '.join(r.notes)})" if r.notes else ""))
            for i, r in enumerate(rows, 1)]
    widths = [max(len(x[c]) for x in [head, *body]) for c in range(len(head))]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(head), fmt(tuple("-" * w for w in widths)), *map(fmt, body)])


def result_line(rows: list[Row], cmp: Comparison | None) -> str:
    survived = sum(r.survived for r in rows)
    if cmp is None:
        return f"result: interrupts={len(rows)} survived={survived} final_equal=false one_record_per_step=false " \
               f"checkpoints_verified=0/0"
    return (f"result: interrupts={len(rows)} survived={survived} final_equal={str(cmp.final_equal).lower()} "
            f"one_record_per_step={str(cmp.one_record_per_step).lower()} "
            f"checkpoints_verified={cmp.checkpoints_verified}/{cmp.checkpoints}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="seeds the interrupts, their moments and corruptions")
    parser.add_argument("--interrupts", type=int, default=20)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--interval-steps", type=int, default=5, help="checkpoint.interval_steps")
    parser.add_argument("--corrupt-share", type=float, default=0.5,
                        help="share of restarts preceded by damaging the newest verified checkpoint")
    parser.add_argument("--size", choices=("bench", "small"), default="bench", help="the model (chaos_config)")
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a new temporary directory (kept)")
    args = parser.parse_args(argv)

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="acodm-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    data = make_synthetic_data(work / "tokens") if not (work / "tokens").exists() else work / "tokens"
    configs = {}
    for name in ("reference", "chaos"):
        if (work / name).exists():
            shutil.rmtree(work / name)
        (work / name).mkdir()
        configs[name] = work / name / "config.yml"
        configs[name].write_text(yaml.safe_dump(chaos_config(data, work / name / "run", args.steps,
                                                             args.interval_steps, args.size)))
    rng = random.Random(args.seed)
    plan = plan_interrupts(rng, args.interrupts, args.corrupt_share)
    print(f"chaos: {args.steps} steps, checkpoint every {args.interval_steps}, keep_last 2, {args.interrupts} "
          f"interrupts (seed {args.seed}); work dir {work}", flush=True)

    started = time.monotonic()
    try:
        run_uninterrupted(configs["reference"])
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1
    print(f"uninterrupted run: {time.monotonic() - started:.0f} s", flush=True)

    started = time.monotonic()
    cmp = None
    try:
        rows = run_chaos(configs["chaos"], plan, rng, say=lambda m: print(m, flush=True))
    except RuntimeError as e:
        rows = e.args[1] if len(e.args) > 1 else []
        print(f"chaos run stopped: {e.args[0]}", file=sys.stderr)
    else:
        print(f"chaos run: {time.monotonic() - started:.0f} s", flush=True)
        cmp = compare_runs(work / "reference" / "run", work / "chaos" / "run", args.steps)
    print()
    print(table(rows))
    print()
    if cmp is not None:
        weights = "bitwise equal" if cmp.weights_bitwise else f"max |diff| {cmp.weights_max_diff:.3g}"
        print(f"train records {'equal' if cmp.losses_equal else 'DIFFER'} at every step; final weights {weights}")
        for note in cmp.notes:
            print(f"  {note}")
    print(result_line(rows, cmp))
    ok = cmp is not None and cmp.final_equal and cmp.one_record_per_step and \
        cmp.checkpoints_verified == cmp.checkpoints and all(r.survived for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
