"""Export a trained AC-ODM actor from a checkpoint, and load it back with compatibility checks.

An exported actor directory holds
    actor.safetensors   the actor network's weights
    actor.json          domains (names and order), state spec, network shape, training step, source
                        checkpoint and the run's config (config.yml text, parsed if pyyaml is available)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from acodm.rl.networks import Actor
from acodm.serialization import atomic_directory, load_state
from acodm.state import StateSpec

ACTOR_WEIGHTS = "actor.safetensors"
ACTOR_METADATA = "actor.json"
FORMAT_VERSION = 1


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint directory (has mixer/), or a run directory whose checkpoints/latest names one."""
    path = Path(path)
    if (path / "mixer").is_dir():
        return path
    latest = path / "checkpoints" / "latest"
    if latest.is_file():
        name = latest.read_text().strip()
        ckpt = path / "checkpoints" / name
        if not (ckpt / "mixer").is_dir():
            raise FileNotFoundError(f"{latest} names {name!r} but {ckpt}/mixer does not exist")
        return ckpt
    raise FileNotFoundError(
        f"{path} is neither a checkpoint directory (with mixer/) nor a run directory (with checkpoints/latest)"
    )


def export_actor(checkpoint_or_run: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write OUT_DIR/actor.safetensors and OUT_DIR/actor.json from an acodm checkpoint; returns OUT_DIR."""
    ckpt = resolve_checkpoint(checkpoint_or_run)
    sd = load_state(ckpt / "mixer")
    method = sd.get("method")
    if method != "acodm":
        raise ValueError(
            f"{ckpt}/mixer holds a {method!r} mixer; only an 'acodm' (actor-critic) run has an actor to export"
        )
    inner = sd["mixer"]
    cfg = inner["config"]
    spec = StateSpec.from_dict(inner["state_spec"])
    actor_sd = {k: v for k, v in inner["ddpg"]["actor"].items()}
    metadata: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "domains": list(sd["domains"]),
        "state_spec": spec.to_dict(),
        "network": {"state_dim": spec.dim, "num_domains": spec.num_domains,
                    "hidden_size": int(cfg["hidden_size"]), "num_hidden_layers": int(cfg["num_hidden_layers"])},  # fmt: skip
        "training_step": int(inner["step"]),
        "reward": cfg["reward"],
        "source_checkpoint": str(ckpt.resolve()),
        "mixer_config": cfg,
    }
    config_file = ckpt / "config.yml"
    if config_file.is_file():
        text = config_file.read_text()
        metadata["run_config_text"] = text
        try:
            import yaml

            metadata["run_config"] = yaml.safe_load(text)
        except ImportError:
            pass
    out = Path(out_dir)
    with atomic_directory(out) as tmp:
        save_file({k: v.contiguous().clone() for k, v in actor_sd.items()}, str(tmp / ACTOR_WEIGHTS))
        (tmp / ACTOR_METADATA).write_text(json.dumps(metadata, indent=1, default=str))
    return out


def read_actor_metadata(path: str | os.PathLike) -> dict:
    meta_file = Path(path) / ACTOR_METADATA
    if not meta_file.is_file():
        raise FileNotFoundError(f"{path} is not an exported actor (no {ACTOR_METADATA}); create one with "
                                f"tools/export_actor.py")  # fmt: skip
    return json.loads(meta_file.read_text())


def load_actor(
    path: str | os.PathLike,
    expected_domains: list[str] | None = None,
    expected_spec: StateSpec | None = None,
    device: str = "cpu",
) -> tuple[Actor, dict]:
    """Load an exported actor (eval mode, no grad); raise a clear error if it does not fit this run."""
    metadata = read_actor_metadata(path)
    trained = StateSpec.from_dict(metadata["state_spec"])
    if expected_domains is not None:
        # Compare domains first (the more common mistake), independently of the probe count.
        StateSpec(tuple(expected_domains), trained.num_probes).check_compatible(trained, what=f"the actor in {path}")
    if expected_spec is not None:
        expected_spec.check_compatible(trained, what=f"the actor in {path}")
    net = metadata["network"]
    actor = Actor(net["state_dim"], net["num_domains"], net["hidden_size"], net["num_hidden_layers"])
    actor.load_state_dict(load_file(str(Path(path) / ACTOR_WEIGHTS)))
    actor.to(torch.device(device)).eval().requires_grad_(False)
    return actor, metadata
