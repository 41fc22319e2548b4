"""Checkpoints (DESIGN.md section 8).

A checkpoint is a directory ``RUN_DIR/checkpoints/step_XXXXXXXX/`` holding

- ``deepspeed/``: DeepSpeed's model, optimizer and LR-scheduler state (every rank writes its part);
- ``model.safetensors``: the full model weights in fp32 under transformers' GPTNeoX names (export, eval,
  DoReMi reference models read this and need no DeepSpeed);
- ``trainer.json`` (step, tokens, counters, RNG states), ``data.json`` (the plan's cursors and step),
  ``mixer/`` (the mixer's state, safetensors + JSON, rank 0) and ``config.yml`` (the resolved config).

It is written under ``step_XXXXXXXX.tmp`` and renamed when complete; ``checkpoints/latest`` (a text file
naming the directory) is replaced last, so a run killed mid-write resumes from the previous checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

from neox.config import ConfigError, ExperimentConfig, from_dict, save_config
from neox.model.config import ModelConfig

if TYPE_CHECKING:
    from neox.training.trainer import Trainer

LATEST = "latest"


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=_json_default))
    tmp.replace(path)


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

        from acodm.serialization import save_state

        weights = {k: v.detach().float().cpu().contiguous() for k, v in weights.items()}
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt", "step": str(trainer.step)})
        _write_json(tmp / "trainer.json", trainer.state_dict())
        _write_json(tmp / "data.json", trainer.loader.state_dict())
        save_state(tmp / "mixer", trainer.mixer.state_dict())
        save_config(trainer.cfg, tmp / "config.yml")
        if final.exists():  # re-saving the same step (e.g. the final save right after an interval save)
            shutil.rmtree(final)
        os.replace(tmp, final)
        latest = root / LATEST
        latest_tmp = root / (LATEST + ".tmp")
        latest_tmp.write_text(name + "\n")
        latest_tmp.replace(latest)
        _prune(root, keep_last=trainer.cfg.checkpoint.keep_last)
    _barrier()
    return final


def full_state_dict(trainer: "Trainer", deepspeed_dir: Path) -> dict[str, torch.Tensor] | None:
    """The whole model's weights under HF names on the main rank (None elsewhere), whatever the layout.

    Collective: tensor-parallel shards are gathered over their group; pipeline stages are read back from
    the layer files DeepSpeed just wrote into ``deepspeed_dir`` (the checkpoint directory must be on a
    filesystem every node sees, as DeepSpeed's own checkpoints are)."""
    topo, module, cfg = trainer.topology, trainer.engine.module, trainer.cfg.model
    if topo.pipe > 1:
        from neox.model.pipeline import pipeline_to_hf_state_dict, read_layer_checkpoints

        _barrier()  # every stage's (and tensor shard's) layer files are on disk
        if not topo.is_main:
            return None
        return pipeline_to_hf_state_dict(read_layer_checkpoints(deepspeed_dir, cfg), cfg.num_layers)
    if topo.tensor > 1:
        from neox.model.tensor_parallel import gather_tp_state_dict

        full = gather_tp_state_dict(module, topo.tensor_group)
        return full if topo.is_main else None
    return module.state_dict() if topo.is_main else None


def _prune(root: Path, keep_last: int) -> None:
    complete = sorted(p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))
    if keep_last > 0:
        for old in complete[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory (its latest checkpoint) or a checkpoint directory -> the checkpoint directory."""
    path = Path(path)
    if (path / "model.safetensors").is_file() and (path / "config.yml").is_file():
        return path
    latest = path / "checkpoints" / LATEST
    if latest.is_file():
        ckpt = path / "checkpoints" / latest.read_text().strip()
        if ckpt.is_dir():
            return ckpt
        raise FileNotFoundError(f"{latest} names {ckpt.name}, which does not exist; the run directory is damaged")
    raise FileNotFoundError(f"{path} is neither a checkpoint directory (with model.safetensors and config.yml) nor "
                            f"a run directory with checkpoints/{LATEST}")


def find_resume_checkpoint(cfg: ExperimentConfig, run_dir: Path) -> Path | None:
    resume = cfg.checkpoint.resume
    if resume == "none":
        return None
    if resume == "auto":
        try:
            return resolve_checkpoint(run_dir)
        except FileNotFoundError:
            return None  # a fresh run: nothing to resume yet
    return resolve_checkpoint(resume)


def cleanup_partial(run_dir: Path) -> list[Path]:
    """Remove directories left by a run killed during a checkpoint write."""
    removed = []
    for tmp in (run_dir / "checkpoints").glob("step_*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)
        removed.append(tmp)
    return removed


def load_checkpoint(trainer: "Trainer", ckpt: Path) -> None:
    """Collective: restore engine, trainer counters, data plan and mixer from ``ckpt``."""
    from acodm.serialization import load_state

    trainer.check_layout(_read_json(ckpt / "trainer.json"))
    load_path, _ = trainer.engine.load_checkpoint(str(ckpt), tag="deepspeed", load_optimizer_states=True,
                                                  load_lr_scheduler_states=True)
    if load_path is None:
        raise FileNotFoundError(f"DeepSpeed found no state in {ckpt / 'deepspeed'}")
    trainer.load_state_dict(_read_json(ckpt / "trainer.json"))
    trainer.loader.load_state_dict(_read_json(ckpt / "data.json"))
    trainer.mixer.load_state_dict(load_state(ckpt / "mixer"))


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
