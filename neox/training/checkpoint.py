"""Checkpoints (docs/design.md, "Checkpoints and signals").

A checkpoint is a directory ``RUN_DIR/checkpoints/step_XXXXXXXX/`` holding

- ``deepspeed/``: DeepSpeed's model, optimizer and LR-scheduler state (every rank writes its part);
- ``model.safetensors``: the full model weights in fp32 under transformers' GPTNeoX names (export, eval,
  DoReMi reference models read this and need no DeepSpeed);
- the state of the run's stateful parts (``Trainer.states``), each in its place (``STATE_FILES``):
  ``trainer.json`` (step, tokens, counters, RNG states, and the mixing component's weights in force),
  ``data.json`` (the plan's cursors and step), ``mixer/`` and ``statistics/`` (the mixing component's mixer
  and step statistics, safetensors + JSON), ``callbacks.json`` (the callbacks' own state); rank 0 writes them;
- ``config.yml`` (the resolved config).

It is written under ``step_XXXXXXXX.tmp`` and renamed when complete; ``checkpoints/latest`` (a text file
naming the directory) is replaced last, so a run killed mid-write resumes from the previous checkpoint.

``manifest.json`` is written last inside the directory: the size and sha256 of every other file. A checkpoint
is *verified* when every listed file is there with its size and checksum. Resuming, loading a run's weights
and deleting old checkpoints all go by it: a damaged latest checkpoint is skipped (one line naming it and why)
for the newest verified one, and cleanup never deletes the newest verified checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

from neox.config import ConfigError, ExperimentConfig, from_dict, save_config
from neox.model.config import ModelConfig
from neox.files import atomic_write_text, file_sha256
from neox.permissions import respect_umask

if TYPE_CHECKING:
    from neox.training.trainer import Trainer

LATEST = "latest"
MANIFEST = "manifest.json"


class CheckpointError(FileNotFoundError):
    """No usable checkpoint where one was asked for; the message names the checkpoint and what is wrong."""


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, default=_json_default))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def _json_object_hook(obj: dict[str, Any]) -> Any:
    if "__ndarray__" in obj:
        return np.asarray(obj["__ndarray__"], dtype=obj["dtype"])
    return obj


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(), object_hook=_json_object_hook)


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def rng_state() -> dict[str, Any]:
    return {"python": repr(random.getstate()), "numpy": np.random.get_state()[1].tolist(),
            "numpy_pos": int(np.random.get_state()[2]), "torch": torch.get_rng_state().tolist()}


def set_rng_state(state: dict[str, Any]) -> None:
    import ast

    random.setstate(ast.literal_eval(state["python"]))
    np.random.set_state(("MT19937", np.asarray(state["numpy"], dtype=np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))


def save_checkpoint(trainer: "Trainer") -> Path:
    """Collective: every rank calls it. Returns the final directory."""
    root = trainer.run_dir / "checkpoints"
    name = checkpoint_name(trainer.step)
    final, tmp = root / name, root / f"{name}.tmp"
    main = trainer.topology.is_main
    if main:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    _barrier()
    trainer.engine.save_checkpoint(str(tmp), tag="deepspeed", save_latest=False)
    weights = full_state_dict(trainer, tmp / "deepspeed")
    if main:
        from safetensors.torch import save_file

        weights = {k: v.detach().float().cpu().contiguous() for k, v in weights.items()}
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt", "step": str(trainer.step)})
        save_states(tmp, trainer.states())
        save_config(trainer.cfg, tmp / "config.yml")
    _barrier()  # every rank's DeepSpeed files are on disk before the manifest lists them
    if main:
        respect_umask(tmp)  # mkdtemp and safetensors make private files; a team reads a run's checkpoints
        write_manifest(tmp, trainer.step)
        if final.exists():  # re-saving the same step (e.g. the final save right after an interval save)
            shutil.rmtree(final)
        os.replace(tmp, final)
        atomic_write_text(root / LATEST, name + "\n")
        _prune(root, keep_last=trainer.cfg.checkpoint.keep_last, known_good=final)
    _barrier()
    return final


# Where each stateful part's state lies in a checkpoint. The files predate the mixing component: its weights in
# force stay in trainer.json, its mixer and statistics in their own directories, so older checkpoints still load.
STATE_FILES = {"trainer": "trainer.json", "data": "data.json", "mixing.mixer": "mixer",
               "mixing.statistics": "statistics", "callbacks": "callbacks.json"}


def save_states(ckpt: Path, states: dict[str, Any]) -> None:
    """Each part's ``state_dict()`` into ``ckpt`` (``STATE_FILES``); the main rank's work."""
    from acodm.serialization import save_state

    sd = {name: part.state_dict() for name, part in states.items()}
    mixing = sd["mixing"]
    # MANIFEST: True lets a lost manifest be told from a checkpoint written before manifests existed.
    _write_json(ckpt / STATE_FILES["trainer"], {**sd["trainer"], "weights": mixing["weights"], MANIFEST: True})
    _write_json(ckpt / STATE_FILES["data"], sd["data"])
    save_state(ckpt / STATE_FILES["mixing.mixer"], mixing["mixer"])
    save_state(ckpt / STATE_FILES["mixing.statistics"], mixing["statistics"])
    _write_json(ckpt / STATE_FILES["callbacks"], sd["callbacks"])


def load_states(ckpt: Path, states: dict[str, Any]) -> None:
    """Each part's ``load_state_dict`` from ``ckpt``, in the order: trainer (its RNG states), data, mixing,
    callbacks. A checkpoint written before ``statistics/`` or ``callbacks.json`` existed starts those anew."""
    from acodm.serialization import load_state

    trainer = _read_json(ckpt / STATE_FILES["trainer"])
    states["trainer"].load_state_dict(trainer)
    states["data"].load_state_dict(_read_json(ckpt / STATE_FILES["data"]))
    statistics = ckpt / STATE_FILES["mixing.statistics"]
    states["mixing"].load_state_dict({"weights": trainer["weights"],
                                      "mixer": load_state(ckpt / STATE_FILES["mixing.mixer"]),
                                      "statistics": load_state(statistics) if statistics.exists() else None})
    if (ckpt / STATE_FILES["callbacks"]).is_file():
        states["callbacks"].load_state_dict(_read_json(ckpt / STATE_FILES["callbacks"]))


def full_state_dict(trainer: "Trainer", deepspeed_dir: Path) -> dict[str, torch.Tensor] | None:
    """The whole model's weights under HF names on the main rank (None elsewhere), whatever the layout.

    Collective: tensor-parallel shards are gathered over their group; pipeline stages are read back from
    the layer files DeepSpeed just wrote into ``deepspeed_dir`` (the checkpoint directory must be on a
    filesystem every node sees, as DeepSpeed's own checkpoints are)."""
    topo, module, cfg = trainer.topology, trainer.engine.module, trainer.cfg.model
    if topo.pipe > 1:
        from neox.model.pipeline_checkpoint import pipeline_to_hf_state_dict, read_layer_checkpoints

        _barrier()  # every stage's (and tensor shard's) layer files are on disk
        if not topo.is_main:
            return None
        return pipeline_to_hf_state_dict(read_layer_checkpoints(deepspeed_dir, cfg), cfg.num_layers)
    if topo.tensor > 1:
        from neox.model.tensor_parallel import gather_tp_state_dict

        full = gather_tp_state_dict(module, topo.tensor_group)
        return full if topo.is_main else None
    return module.state_dict() if topo.is_main else None


def write_manifest(ckpt: Path, step: int) -> None:
    """Size and sha256 of every file in ``ckpt``; written last, so its presence means the rest is complete."""
    files = {}
    for path in sorted(p for p in ckpt.rglob("*") if p.is_file() and p.name != MANIFEST):
        files[path.relative_to(ckpt).as_posix()] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
    _write_json(ckpt / MANIFEST, {"format": 1, "step": step, "files": files})


def verify_checkpoint(ckpt: Path, checksums: bool = True) -> str | None:
    """None if ``ckpt`` matches its manifest, else why not (one phrase naming the file). ``checksums=False``
    compares sizes only (a stat per file: a missing or truncated file, not a changed byte)."""
    ckpt = Path(ckpt)
    if not ckpt.is_dir():
        return "does not exist"
    try:
        manifest = json.loads((ckpt / MANIFEST).read_text())
        files = manifest["files"]
    except FileNotFoundError:
        # Only a complete write is renamed to step_*, so no manifest means a checkpoint written before manifests
        # (used unverified) -- unless its trainer.json says it had one.
        try:
            had_manifest = json.loads((ckpt / "trainer.json").read_text()).get(MANIFEST, False)
        except FileNotFoundError:  # no checkpoint lacks it: a directory deleted part-way (a kill during cleanup)
            return f"has neither {MANIFEST} nor trainer.json"
        except (ValueError, AttributeError):
            return f"has no {MANIFEST} and its trainer.json is unreadable"
        return f"{MANIFEST} is missing" if had_manifest else None
    except (ValueError, KeyError, TypeError):
        return f"{MANIFEST} is unreadable"
    for rel, expected in files.items():
        path = ckpt / rel
        if not path.is_file():
            return f"{rel} is missing"
        size = path.stat().st_size
        if size != expected["bytes"]:
            return f"{rel} has {size} bytes, the manifest says {expected['bytes']}"
        if checksums and file_sha256(path) != expected["sha256"]:
            return f"{rel} does not match its sha256 in the manifest"
    return None


def complete_checkpoints(root: Path) -> list[Path]:
    """The renamed (complete-looking) checkpoint directories under ``root``, oldest first."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))


def newest_verified(root: Path, log=None) -> Path | None:
    """The newest checkpoint under ``root`` that matches its manifest, ``latest`` first; each damaged one
    skipped on the way is reported in one line."""
    candidates = complete_checkpoints(root)[::-1]
    latest = root / LATEST
    if latest.is_file():
        named = root / latest.read_text().strip()
        candidates = [named] + [c for c in candidates if c != named]
    for ckpt in candidates:
        problem = verify_checkpoint(ckpt)
        if problem is None:
            return ckpt
        (log or _stderr)(f"checkpoint {ckpt} is damaged ({problem}); skipping it for an older one")
    return None


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _prune(root: Path, keep_last: int, known_good: Path | None = None) -> None:
    """Delete all but the ``keep_last`` newest intact checkpoints, never the newest verified one nor ``known_good``
    (one just written and hashed, not read back again). A damaged checkpoint (a file missing or cut short) does not
    count toward ``keep_last`` and goes: kept, it would push out one that can still be resumed from."""
    if keep_last <= 0:
        return
    complete = complete_checkpoints(root)
    intact = [c for c in complete if c == known_good or verify_checkpoint(c, checksums=False) is None]
    keep = set(intact[-keep_last:]) | ({known_good} if known_good is not None else set())
    for ckpt in reversed(complete):  # newest first: stop at the first one that proves itself
        if ckpt == known_good or verify_checkpoint(ckpt) is None:
            keep.add(ckpt)
            break
    for old in complete:
        if old not in keep:
            shutil.rmtree(old, ignore_errors=True)


def resolve_checkpoint(path: str | Path, log=None) -> Path:
    """A run directory (its newest verified checkpoint) or a checkpoint directory (verified) -> the checkpoint
    directory. Raises CheckpointError naming what is damaged or missing."""
    path = Path(path)
    if (path / "model.safetensors").is_file() and (path / "config.yml").is_file():
        problem = verify_checkpoint(path)
        if problem is not None:
            raise CheckpointError(f"checkpoint {path} is damaged: {problem}; use another checkpoint of the run")
        return path
    root = path / "checkpoints"
    if (root / LATEST).is_file() or complete_checkpoints(root):
        ckpt = newest_verified(root, log)
        if ckpt is None:
            raise CheckpointError(f"no checkpoint under {root} matches its {MANIFEST} (all are damaged or "
                                  f"incomplete); start the run afresh in another logging.run_dir")
        return ckpt
    raise FileNotFoundError(f"{path} is neither a checkpoint directory (with model.safetensors and config.yml) nor "
                            f"a run directory with checkpoints/{LATEST}")


def find_resume_checkpoint(cfg: ExperimentConfig, run_dir: Path, log=None) -> Path | None:
    """The checkpoint to resume from (None: a fresh run). Raises CheckpointError if one is asked for and none
    can be used."""
    resume = cfg.checkpoint.resume
    if resume == "none":
        return None
    if resume == "auto":
        root = Path(run_dir) / "checkpoints"
        if not (root / LATEST).is_file() and not complete_checkpoints(root):
            return None  # a fresh run: nothing to resume yet
        source = run_dir
    else:
        source = resume
    try:
        return resolve_checkpoint(source, log)
    except FileNotFoundError as e:
        raise CheckpointError(f"checkpoint.resume={resume}: {e}") from None


def cleanup_partial(run_dir: Path) -> list[Path]:
    """Remove directories left by a run killed during a checkpoint write."""
    removed = []
    for tmp in (run_dir / "checkpoints").glob("step_*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)
        removed.append(tmp)
    return removed


def load_checkpoint(trainer: "Trainer", ckpt: Path) -> None:
    """Collective: restore DeepSpeed's state, then every stateful part of the run (``Trainer.states``)."""
    trainer.check_layout(_read_json(ckpt / "trainer.json"))
    load_path, _ = trainer.engine.load_checkpoint(str(ckpt), tag="deepspeed", load_optimizer_states=True,
                                                  load_lr_scheduler_states=True)
    if load_path is None:
        raise FileNotFoundError(f"DeepSpeed found no state in {ckpt / 'deepspeed'}")
    load_states(ckpt, trainer.states())
    _resync_lr(trainer.scheduler, trainer.cfg.optimizer.lr)


def _resync_lr(scheduler: torch.optim.lr_scheduler.LambdaLR, base_lr: float) -> None:
    """The optimizer's LR from *this* run's schedule at the restored step. The checkpoint holds the LR the old
    schedule gave; with the same optimizer.lr and schedule.* this is the same number, with a changed
    schedule.train_steps (or warm-up, decay, lr) the resumed steps follow the new schedule from the first one on
    (the schedule's lambda is relative to optimizer.lr: the restored base LR would be the old one)."""
    step = scheduler.last_epoch
    scheduler.base_lrs = [base_lr] * len(scheduler.base_lrs)
    lrs = [base_lr * fn(step) for fn in scheduler.lr_lambdas]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        group["lr"], group["initial_lr"] = lr, base_lr
    scheduler._last_lr = lrs  # what get_last_lr() reports for the next step's record


def saved_config(ckpt: Path) -> dict[str, Any]:
    """The resolved config the checkpoint was written with ({} if it has none)."""
    import yaml

    path = Path(ckpt) / "config.yml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """One line per setting that differs from the checkpoint's config (checkpoint.resume itself excepted)."""
    old, new = _flatten(previous), _flatten(current)
    changed = [k for k in sorted(set(old) | set(new)) if k != "checkpoint.resume" and old.get(k) != new.get(k)]
    lines = [f"resumed with a changed setting: {k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed]
    if "schedule.train_steps" in changed:
        lines.append("the LR schedule is recomputed for the new schedule.train_steps: the resumed steps take the "
                     "new schedule's LR at their step (README: Checkpoints)")
    return lines


def load_model_config(ckpt: Path) -> ModelConfig:
    import yaml

    raw = yaml.safe_load((ckpt / "config.yml").read_text())
    try:
        return from_dict(ModelConfig, raw["model"], "model")
    except (KeyError, ConfigError) as e:
        raise ConfigError(f"{ckpt / 'config.yml'} has no usable model section: {e}") from None


def load_model(path: str | Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """A model of ours from a run or checkpoint directory (fp32, eval mode)."""
    from safetensors.torch import load_file

    from neox.model.gpt_neox import GPTNeoX

    ckpt = resolve_checkpoint(path)
    model = GPTNeoX(load_model_config(ckpt))
    model.load_state_dict(load_file(str(ckpt / "model.safetensors")), strict=True)
    return model.to(device).eval()
