"""Mixers: statistics in, domain weights out. ``build_mixer`` is the one entry point trainers use."""

from __future__ import annotations

import difflib
from typing import Any

from acodm.mixers.acodm import ACODMConfig, ACODMFrozenConfig, ACODMFrozenMixer, ACODMMixer
from acodm.mixers.base import Mixer, MixerNeeds, StepStats, build_config
from acodm.mixers.doge import DoGEConfig, DoGEMixer
from acodm.mixers.doremi import DoReMiConfig, DoReMiMixer
from acodm.mixers.odm import ODMConfig, ODMMixer
from acodm.mixers.static import StaticConfig, StaticMixer

# method -> (config dataclass, mixer class)
MIXERS: dict[str, tuple[type, type[Mixer]]] = {
    "static": (StaticConfig, StaticMixer),
    "odm": (ODMConfig, ODMMixer),
    "doge": (DoGEConfig, DoGEMixer),
    "doremi": (DoReMiConfig, DoReMiMixer),
    "acodm": (ACODMConfig, ACODMMixer),
    "acodm_frozen": (ACODMFrozenConfig, ACODMFrozenMixer),
}


def build_mixer(method: str, domains: list[str], total_steps: int, seed: int, **params: Any) -> Mixer:
    """Build the mixer ``method`` for ``domains``; ``params`` is the config section (see each XConfig)."""
    if method not in MIXERS:
        close = difflib.get_close_matches(method, list(MIXERS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown mixing method {method!r}.{hint} Known: {', '.join(MIXERS)}")
    config_cls, mixer_cls = MIXERS[method]
    config = build_config(config_cls, params, method)
    return mixer_cls(list(domains), total_steps, seed, config)


__all__ = [
    "MIXERS", "Mixer", "MixerNeeds", "StepStats", "build_mixer",
    "StaticConfig", "ODMConfig", "DoGEConfig", "DoReMiConfig", "ACODMConfig", "ACODMFrozenConfig",
    "StaticMixer", "ODMMixer", "DoGEMixer", "DoReMiMixer", "ACODMMixer", "ACODMFrozenMixer",
]  # fmt: skip
