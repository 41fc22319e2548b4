"""Static mixtures: uniform, given ("natural") weights, temperature sampling, weights from a file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from acodm.mixers.base import Mixer, MixerNeeds, StepStats, resolve_initial_weights

STATIC_KINDS = ("uniform", "natural", "temperature", "file")


@dataclass
class StaticConfig:
    kind: str = "uniform"  # uniform | natural | temperature | file
    weights: dict[str, float] | None = None  # kind=natural: domain -> weight (normalised here)
    domain_sizes: dict[str, float] | None = None  # kind=temperature: domain -> tokens (from the manifest)
    alpha: float = 1.0  # kind=temperature: p ∝ n^alpha (1 = proportional to size, 0 = uniform)
    path: str | None = None  # kind=file: JSON or YAML file with a mapping domain -> weight
    floor: float = 0.0  # min weight of every domain (a static mixture has no exploration need)
    initial_weights: dict[str, float] | None = None  # accepted for config symmetry; unused when static

    def __post_init__(self) -> None:
        if self.kind not in STATIC_KINDS:
            raise ValueError(f"mixing.kind must be one of {STATIC_KINDS}, got {self.kind!r}")


def _read_weight_file(path: str) -> dict[str, float]:
    text = Path(path).read_text()
    if path.endswith((".yml", ".yaml")):
        try:
            import yaml
        except ImportError as exc:  # pragma: no cover - pyyaml is installed with the project
            raise ValueError(f"reading {path} needs pyyaml; or give the weights as JSON") from exc
        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"mixing.path={path} must hold a mapping domain -> weight, got {type(data).__name__}")
    return {str(k): float(v) for k, v in data.items()}


class StaticMixer(Mixer):
    method = "static"
    needs = MixerNeeds()

    def __init__(self, domains: list[str], total_steps: int, seed: int, config: StaticConfig):
        super().__init__(domains, config.floor, total_steps, seed)
        self.config = config
        if config.kind == "uniform":
            given = None
        elif config.kind == "natural":
            if config.weights is None:
                raise ValueError("mixing.kind=natural needs mixing.weights (a mapping domain -> weight)")
            given = config.weights
        elif config.kind == "temperature":
            if config.domain_sizes is None:
                raise ValueError("mixing.kind=temperature needs mixing.domain_sizes (domain -> tokens)")
            sizes = {d: float(config.domain_sizes[d]) for d in config.domain_sizes}
            if any(v <= 0 for v in sizes.values()):
                raise ValueError(f"mixing.domain_sizes must be > 0 tokens, got {sizes}")
            given = {d: n**config.alpha for d, n in sizes.items()}
        else:
            if config.path is None:
                raise ValueError("mixing.kind=file needs mixing.path (a JSON/YAML file domain -> weight)")
            given = _read_weight_file(config.path)
        self._weights = resolve_initial_weights(given, self.domains, self.floor)

    def _observe(self, stats: StepStats) -> dict[str, float]:
        return {}

    def average_weights(self) -> np.ndarray:
        return self.weights()
