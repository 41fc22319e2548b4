"""The start-up check of the DeepSpeed version, and that pyproject.toml declares the same range."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from neox.training.ds_compat import (DEEPSPEED_MIN, DEEPSPEED_REQUIREMENT, UnsupportedDeepSpeedError,
                                     check_deepspeed_version)

ROOT = Path(__file__).resolve().parents[1]


def test_the_installed_deepspeed_is_supported():
    assert check_deepspeed_version() == metadata.version("deepspeed")


@pytest.mark.parametrize("version", ["0.19.8", "0.19.9", "0.19.8+cu124"])
def test_releases_in_the_range_pass(version):
    assert check_deepspeed_version(version) == version


@pytest.mark.parametrize("version", ["0.16.0", "0.19.7", "0.20.0", "0.20.0rc1", "1.0.0", "not-a-version"])
def test_releases_outside_the_range_are_refused_naming_it(version):
    with pytest.raises(UnsupportedDeepSpeedError, match=r"deepspeed>=0\.19\.8,<0\.20"):
        check_deepspeed_version(version)


def test_a_missing_deepspeed_names_the_range(monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    with pytest.raises(UnsupportedDeepSpeedError, match="not installed.*deepspeed>=0.19.8,<0.20"):
        check_deepspeed_version()


def test_pyproject_and_requirements_declare_the_checked_range():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert [d for d in deps if d.startswith("deepspeed")] == [DEEPSPEED_REQUIREMENT]
    pins = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
            if line.startswith("deepspeed")]
    assert pins == [f"deepspeed=={DEEPSPEED_MIN}"]


def test_train_refuses_an_unsupported_deepspeed_in_one_line(monkeypatch, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_script", ROOT / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    monkeypatch.setattr("neox.training.ds_compat.metadata.version", lambda name: "0.16.4")
    assert train.main([str(ROOT / "configs" / "demo_cpu.yml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "0.16.4" in err[0] and "deepspeed>=" in err[0], err
