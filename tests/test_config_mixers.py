"""mixing.<method> sections are checked at load time against the mixer's own config dataclass."""

from __future__ import annotations

from pathlib import Path

import pytest

from neox.config import load_config, save_config
from neox.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yml"))


def test_a_misspelt_mixer_parameter_fails_at_load_time_naming_the_key():
    with pytest.raises(ConfigError, match=r"unknown config key 'mixing.acodm.lr_maxx'; did you mean 'lr_max'\?"):
        load_config(ROOT / "configs/demo_cpu.yml", ["mixing.acodm.lr_maxx=0.01"])
    # the sections of methods not chosen are checked too: a typo there is still a typo
    with pytest.raises(ConfigError, match=r"unknown config key 'mixing.odm.alpah'; did you mean 'alpha'\?"):
        load_config(ROOT / "configs/demo_cpu.yml", ["mixing.method=static", "mixing.odm.alpah=0.5"])


def test_mixer_parameter_types_and_values_are_checked_at_load_time():
    demo = ROOT / "configs/demo_cpu.yml"
    with pytest.raises(ConfigError, match="mixing.acodm.hidden_size must be an integer, got 'wide'"):
        load_config(demo, ["mixing.acodm.hidden_size=wide"])
    with pytest.raises(ConfigError, match="mixing.doge.exclude_self must be true or false"):
        load_config(demo, ["mixing.doge.exclude_self=3"])
    with pytest.raises(ConfigError, match=r"mixing.acodm.reward must be one of"):  # the mixer's own check
        load_config(demo, ["mixing.method=acodm", "mixing.acodm.reward=linaer"])
    with pytest.raises(ConfigError, match="mixing.acodm_frozen.actor is required"):
        load_config(demo, ["mixing.method=acodm_frozen"])
    cfg = load_config(demo, ["mixing.method=acodm", "mixing.acodm.hidden_size=64.0"])
    assert cfg.mixing.acodm["hidden_size"] == 64 and isinstance(cfg.mixing.acodm["hidden_size"], int)


def test_run_level_keys_stay_accepted_and_unset_keys_stay_unset():
    cfg = load_config(ROOT / "configs/demo_cpu.yml", [
        "mixing.method=doremi", "mixing.doremi.reference=runs/x", "mixing.acodm.initial_weights=natural"])
    assert cfg.mixing.doremi == {"reference": "runs/x"}  # vocab_size unset: the trainer takes the model's
    assert cfg.mixing.acodm["initial_weights"] == "natural" and "floor" not in cfg.mixing.acodm


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads_and_its_saved_form_round_trips(path, tmp_path):
    cfg = load_config(path)
    save_config(cfg, tmp_path / "config.yml")
    again = load_config(tmp_path / "config.yml")
    assert again == cfg
