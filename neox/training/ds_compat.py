"""The DeepSpeed releases whose internals this stack relies on, and the start-up check that refuses others.

Three places reach past DeepSpeed's public API, each read in DeepSpeed 0.19.8:

- the pipeline step replaces the optimizer-step entry of ``PipelineEngine._INSTRUCTION_MAP`` on the engine
  instance (``neox.training.pipeline_step.wrap_optimizer_step``), so the statistics are reduced after every
  stage's last backward;
- the skipped-step veto wraps the optimizer wrapper's ``step``, which ``_take_model_step`` calls
  (``neox/training/engine.py``);
- the tensor-parallel layers mark parameters with ``model_parallel``, the attribute
  ``deepspeed.runtime.utils.is_model_parallel_parameter`` reads (``neox/model/tensor_parallel.py``).

A release outside ``DEEPSPEED_REQUIREMENT`` may move any of them; the first would then fail only after a
pipeline job has started, the last would silently mis-scale gradient clipping. pyproject.toml declares the
same requirement (``tests/test_ds_compat.py`` keeps the two in step; requirements.txt pins 0.19.8).
"""

from __future__ import annotations

from importlib import metadata

DEEPSPEED_MIN = "0.19.8"  # the release the internals above were read in
DEEPSPEED_BELOW = "0.20"  # the next minor release may change them: re-read them, then raise this bound
DEEPSPEED_REQUIREMENT = f"deepspeed>={DEEPSPEED_MIN},<{DEEPSPEED_BELOW}"


class UnsupportedDeepSpeedError(RuntimeError):
    """The installed DeepSpeed is not one whose internals this stack was checked against."""


def check_deepspeed_version(version: str | None = None) -> str:
    """Refuse a DeepSpeed outside ``DEEPSPEED_REQUIREMENT``; ``version`` defaults to the installed one.

    Returns the version. Pre-releases of the upper bound (0.20.0rc1) are outside, as PEP 440 has it.
    """
    if version is None:
        try:
            version = metadata.version("deepspeed")
        except metadata.PackageNotFoundError:
            raise UnsupportedDeepSpeedError(
                f"DeepSpeed is not installed; install a supported release: pip install '{DEEPSPEED_REQUIREMENT}'"
            ) from None
    from packaging.specifiers import SpecifierSet  # a DeepSpeed dependency
    from packaging.version import InvalidVersion, Version

    try:
        parsed = Version(version)
    except InvalidVersion:
        raise UnsupportedDeepSpeedError(f"DeepSpeed reports version {version!r}, which is not a PEP 440 version; "
                                        f"install a release in {DEEPSPEED_REQUIREMENT}") from None
    if not SpecifierSet(f">={DEEPSPEED_MIN},<{DEEPSPEED_BELOW}").contains(parsed, prereleases=True):
        raise UnsupportedDeepSpeedError(
            f"DeepSpeed {version} is installed, but this stack patches DeepSpeed internals "
            f"(PipelineEngine._INSTRUCTION_MAP, the optimizer wrapper's step, the model_parallel mark) that were "
            f"checked only for {DEEPSPEED_REQUIREMENT}; install one: pip install '{DEEPSPEED_REQUIREMENT}' "
            f"(requirements.txt pins {DEEPSPEED_MIN})")
    return version
