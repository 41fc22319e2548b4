"""The experiment configuration: one typed dataclass per component, nested into ``ExperimentConfig``.

Config is data: it holds no tokenizer, writer or step counter. It is loaded from YAML (with ``include:``
for shared model/data sections), then command-line overrides ``key.sub=value`` are applied, and every
value is checked on construction. Errors name the key, the value and the fix; a misspelt key gets a
close-match suggestion.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from acodm.alignment import AlignmentConfig
from acodm.mixers import MIXERS
from neox.data.loader import rank_batch_sequences
from neox.errors import ConfigError
from neox.files import atomic_write_text
from neox.model.config import ModelConfig
from neox.model.tensor_parallel import check_tensor_parallel
from neox.parallel.topology import data_parallel_size

# Each a key of acodm.mixers.MIXERS, whose config dataclass types the section of the same name in MixingConfig.
MIXING_METHODS = ("static", "odm", "doge", "doremi", "acodm", "acodm_frozen")

# Keys of a ``mixing.<method>`` section that are the run's, not the mixer's: the trainer resolves them before
# the mixer is built (neox/training/mixing.py), so they are declared here, with their types.
RUN_LEVEL_MIXER_PARAMS: dict[str, dict[str, Any]] = {
    # DoReMi's reference model: a run or checkpoint directory of a model trained on the reference weights.
    "doremi": {"reference": str | None},
}
# ``initial_weights: natural`` asks for data.reference_weights, resolved by the trainer like the keys above.
NATURAL_WEIGHTS = "natural"


@dataclass
class DataConfig:
    path: str = ""  # output of tools/preprocess_data.py: manifest.json, train/, val/
    domains: list[str] | None = None  # None: every domain in the manifest, in its order
    seq_len_tokens: int = 128
    global_batch_sequences: int = 32
    micro_batch_sequences: int = 8
    min_samples_per_domain: int = 0  # per global batch, when > 0
    tokenizer: str | None = None  # tokenizer.json; copied into the run directory
    train_split: str = "train"
    val_split: str = "val"
    # Reference weights (e.g. the Pile's natural weights): the "natural" static mixture and the weighted
    # validation mean use them. Missing domains get 0; they are renormalised over the run's domains.
    reference_weights: dict[str, float] | None = None

    def __post_init__(self) -> None:
        _positive(self, "data", ("seq_len_tokens", "global_batch_sequences", "micro_batch_sequences"))
        if self.global_batch_sequences % self.micro_batch_sequences:
            raise ConfigError(
                f"data.global_batch_sequences ({self.global_batch_sequences}) must be a multiple of "
                f"data.micro_batch_sequences ({self.micro_batch_sequences})")
        if self.min_samples_per_domain < 0:
            raise ConfigError(f"data.min_samples_per_domain must be >= 0, got {self.min_samples_per_domain}")
        if self.reference_weights is not None:
            bad = {k: v for k, v in self.reference_weights.items() if not (v >= 0 and math.isfinite(v))}
            if bad or sum(self.reference_weights.values()) <= 0:
                raise ConfigError(f"data.reference_weights must be finite, >= 0 and not all 0; got {bad or 'all 0'}")


@dataclass
class AlignmentSection:
    """How the gradient-alignment statistics are gathered (docs/design.md, "Statistics"): the settings of
    ``acodm.alignment.AlignmentConfig`` a user chooses, with its defaults and its checks (``build``); the
    rest (``num_layers``, ``sequence_first``) depends on the model and is filled in where it is built."""
    mode: str = AlignmentConfig.mode  # "exact" (tests, small models) or "sketch" (default at scale)
    probe_pattern: str | None = None  # None: AlignmentConfig's (MLP output projection of layers -1, -3, -5)
    sketch_out: int = AlignmentConfig.sketch_out
    sketch_in: int = AlignmentConfig.sketch_in
    seed: int = AlignmentConfig.seed

    def __post_init__(self) -> None:
        try:
            self.build()
        except ValueError as e:  # AlignmentConfig names its keys "alignment.*"
            raise ConfigError(f"mixing.{e}") from None

    def build(self) -> AlignmentConfig:
        settings = dataclasses.asdict(self)
        if self.probe_pattern is None:
            del settings["probe_pattern"]
        return AlignmentConfig(**settings)


@dataclass
class MixingConfig:
    method: str = "static"
    update_interval_steps: int = 1  # the blend index is rebuilt from the mixer's weights this often
    # Parameters of each method, passed to acodm.mixers.build_mixer; only the chosen method's are used. The
    # keys, their types and their meaning are those of the mixer's own config dataclass (acodm.mixers.MIXERS:
    # StaticConfig, ODMConfig, ...; each field is documented there), checked on load (``_check_mixer_params``).
    # A section holds only the keys that were set: the trainer derives some of the unset ones from the run
    # (AC-ODM's floor from data.min_samples_per_domain, DoReMi's vocab_size from the model), and a saved
    # config.yml keeps that distinction.
    static: dict[str, Any] = field(default_factory=lambda: {"kind": "uniform"})
    odm: dict[str, Any] = field(default_factory=dict)
    doge: dict[str, Any] = field(default_factory=dict)
    doremi: dict[str, Any] = field(default_factory=dict)
    acodm: dict[str, Any] = field(default_factory=dict)
    acodm_frozen: dict[str, Any] = field(default_factory=dict)
    alignment: AlignmentSection = field(default_factory=AlignmentSection)
    # The domains whose validation loss the mixture should lower (None: every training domain). A target
    # domain outside the training domains is never trained on: the mixers that read gradients (DoGE,
    # AC-ODM) see its gradient from one extra micro-batch per step read from ``target_split``, and
    # evaluation reports it; ``val_loss/target`` / ``val_ppl/target`` are the means over the targets.
    target_domains: list[str] | None = None
    target_split: str = "target"

    def __post_init__(self) -> None:
        if self.method not in MIXING_METHODS:
            raise ConfigError(f"mixing.method must be one of {', '.join(MIXING_METHODS)}, got {self.method!r}"
                              + _suggest(self.method, MIXING_METHODS))
        _positive(self, "mixing", ("update_interval_steps",))
        for method in MIXING_METHODS:
            setattr(self, method, _check_mixer_params(method, getattr(self, method), chosen=method == self.method))
        if self.target_domains is not None and (not self.target_domains
                                                or len(set(self.target_domains)) != len(self.target_domains)):
            raise ConfigError(f"mixing.target_domains must be null or a non-empty list of distinct domain names, "
                              f"got {self.target_domains!r}")

    @property
    def params(self) -> dict[str, Any]:
        return dict(getattr(self, self.method))


def _check_mixer_params(method: str, params: dict[str, Any], chosen: bool) -> dict[str, Any]:
    """``mixing.<method>`` checked against the mixer's config dataclass: every key known, every value of its
    type (coerced, as the other sections are) and, for the chosen method, the mixer's own value checks, so a
    typo fails at load time rather than after the trainer has started. Unset keys stay unset."""
    config_cls = MIXERS[method][0]
    hints = typing.get_type_hints(config_cls)
    run_level = RUN_LEVEL_MIXER_PARAMS.get(method, {})
    names = [f.name for f in dataclasses.fields(config_cls)] + list(run_level)
    checked: dict[str, Any] = {}
    for key, value in params.items():
        dotted = f"mixing.{method}.{key}"
        if key not in names:
            raise ConfigError(f"unknown config key {dotted!r}" + _suggest(key, names)
                              + f" (valid keys here: {', '.join(names)})")
        if key == "initial_weights" and value == NATURAL_WEIGHTS:
            checked[key] = value
        else:
            checked[key] = _coerce(run_level[key] if key in run_level else hints[key], value, dotted)
    if chosen:
        mixer_keys = {k: v for k, v in checked.items()
                      if k not in run_level and not (k == "initial_weights" and v == NATURAL_WEIGHTS)}
        try:
            config_cls(**mixer_keys)
        except ValueError as e:  # the mixers name their keys "mixing.<key>"
            raise ConfigError(str(e).replace("mixing.", f"mixing.{method}.", 1)) from None
    return checked


@dataclass
class OptimizerConfig:
    lr: float = 1e-3
    min_lr: float = 1e-4  # cosine decays to this floor
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # 0 disables clipping

    def __post_init__(self) -> None:
        if not (self.lr > 0 and 0 <= self.min_lr <= self.lr):
            raise ConfigError(f"optimizer.lr must be > 0 and 0 <= optimizer.min_lr <= lr; got lr={self.lr}, "
                              f"min_lr={self.min_lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optimizer.betas must be two numbers in [0, 1), got {self.betas}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError("optimizer.weight_decay and optimizer.grad_clip must be >= 0")


@dataclass
class ScheduleConfig:
    train_steps: int = 100
    warmup_steps: int | None = None  # None: warmup_fraction * train_steps
    warmup_fraction: float = 0.01
    decay: str = "cosine"  # "cosine" | "linear" | "constant"

    def __post_init__(self) -> None:
        _positive(self, "schedule", ("train_steps",))
        if self.decay not in ("cosine", "linear", "constant"):
            raise ConfigError(f"schedule.decay must be cosine, linear or constant, got {self.decay!r}")
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError(f"schedule.warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.warmup_steps is not None and not 0 <= self.warmup_steps < self.train_steps:
            raise ConfigError(f"schedule.warmup_steps must be in [0, train_steps={self.train_steps}), "
                              f"got {self.warmup_steps}")

    @property
    def resolved_warmup_steps(self) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        return int(round(self.warmup_fraction * self.train_steps))


@dataclass
class ParallelConfig:
    pipe: int = 1  # pipeline stages (DeepSpeed PipelineModule + train_batch)
    tensor: int = 1  # tensor-parallel ranks per replica (Megatron-style layers, neox/model/tensor_parallel.py)
    # How the pipeline cuts the layer list into stages: "parameters" balances parameter counts (the
    # embedding and the LM head weigh as much as several layers), "uniform" gives every stage as many layers.
    partition_method: str = "parameters"
    # Pipeline only: recompute every N transformer layers in the backward instead of storing activations.
    activation_checkpoint_interval: int = 0

    def __post_init__(self) -> None:
        _positive(self, "parallel", ("pipe", "tensor"))
        if self.partition_method not in ("parameters", "uniform"):
            raise ConfigError(f"parallel.partition_method must be parameters or uniform, got "
                              f"{self.partition_method!r}")
        if self.activation_checkpoint_interval < 0:
            raise ConfigError(f"parallel.activation_checkpoint_interval must be >= 0, got "
                              f"{self.activation_checkpoint_interval}")


@dataclass
class CheckpointConfig:
    interval_steps: int = 0  # 0: only at the end
    keep_last: int = 2  # older complete checkpoints are deleted; 0 keeps all
    resume: str = "none"  # "none", "auto" (the run's latest, if any) or a checkpoint directory
    save_final: bool = True

    def __post_init__(self) -> None:
        if self.interval_steps < 0 or self.keep_last < 0:
            raise ConfigError("checkpoint.interval_steps and checkpoint.keep_last must be >= 0")


@dataclass
class LoggingConfig:
    run_dir: str = "runs/default"
    log_interval_steps: int = 1  # metrics.jsonl gets every step; the console/progress bar every this many
    tensorboard: bool = True
    wandb_project: str | None = None
    wandb_run_name: str | None = None
    progress_bar: bool = True

    def __post_init__(self) -> None:
        _positive(self, "logging", ("log_interval_steps",))


@dataclass
class EvalConfig:
    interval_steps: int = 0  # 0: at the start and the end only
    val_samples_per_domain: int = 64
    micro_batch_sequences: int | None = None  # None: data.micro_batch_sequences
    at_start: bool = True
    lm_eval_tasks: list[str] = field(default_factory=list)  # run at each checkpoint through lm-eval
    lm_eval_limit: int | None = None
    lm_eval_include_path: str | None = None
    # lm-eval runs on rank 0; the other ranks wait for it at a gloo barrier this long (not at the next NCCL
    # collective, whose timeout is 10 minutes; MMLU takes longer).
    lm_eval_timeout_s: int = 6 * 3600

    def __post_init__(self) -> None:
        if self.interval_steps < 0:
            raise ConfigError(f"eval.interval_steps must be >= 0, got {self.interval_steps}")
        _positive(self, "eval", ("val_samples_per_domain", "lm_eval_timeout_s"))


@dataclass
class ExperimentConfig:
    name: str = "run"
    seed: int = 1234
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda"
    max_nonfinite_steps: int = 5  # consecutive non-finite steps before the run stops
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    mixing: MixingConfig = field(default_factory=MixingConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # Passed through to DeepSpeed for what is DeepSpeed's: zero_optimization, bf16/fp16, offload, ...
    # Batch sizes, clipping and the optimizer are derived from the sections above; do not set them here.
    deepspeed: dict[str, Any] = field(default_factory=lambda: {"zero_optimization": {"stage": 1},
                                                                "bf16": {"enabled": "auto"}})

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.max_nonfinite_steps < 1:
            raise ConfigError(f"max_nonfinite_steps must be >= 1, got {self.max_nonfinite_steps}")
        owned = {"train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                 "gradient_clipping", "optimizer", "scheduler"}
        clash = owned & set(self.deepspeed)
        if clash:
            raise ConfigError(
                f"deepspeed.{sorted(clash)[0]} is derived from the data/optimizer/schedule sections; remove it "
                f"from the deepspeed block (batch sizes: data.*, clipping: optimizer.grad_clip)")
        stage = self.deepspeed.get("zero_optimization", {}).get("stage", 0)
        if stage not in (0, 1, 2):
            raise ConfigError(f"deepspeed.zero_optimization.stage must be 0, 1 or 2, got {stage!r} "
                              f"(stage 3 shards parameters, which the probe hooks do not support yet)")
        if self.data.seq_len_tokens > self.model.max_seq_len_tokens:
            raise ConfigError(f"data.seq_len_tokens ({self.data.seq_len_tokens}) exceeds "
                              f"model.max_seq_len_tokens ({self.model.max_seq_len_tokens})")
        self._check_layout(stage)

    def _check_layout(self, zero_stage: int) -> None:
        """Model-parallel layouts the model cannot be cut into are refused here, with the numbers."""
        pipe, tensor, m = self.parallel.pipe, self.parallel.tensor, self.model
        if m.num_layers < pipe:
            raise ConfigError(f"model.num_layers ({m.num_layers}) must be >= parallel.pipe ({pipe}): every "
                              f"stage needs at least one transformer layer")
        if pipe > 1 and zero_stage > 1:
            raise ConfigError(f"parallel.pipe={pipe} needs deepspeed.zero_optimization.stage 0 or 1 (DeepSpeed's "
                              f"pipeline engine does not support stage {zero_stage})")
        if pipe > 1 and self.mixing.method == "doremi":
            raise ConfigError("mixing.method=doremi with parallel.pipe > 1: the reference model's losses need the "
                              "input tokens on the last stage; use parallel.tensor or data parallelism for DoReMi")
        if tensor > 1:
            check_tensor_parallel(m, tensor)

    def check_world_size(self, world_size: int) -> int:
        """Data-parallel size for this many processes; refuses layouts that do not divide it."""
        dp = data_parallel_size(world_size, self.parallel.pipe, self.parallel.tensor)
        rank_batch_sequences(self.data.global_batch_sequences, dp, self.data.micro_batch_sequences)
        return dp

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------- loading

def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Read a YAML experiment (following ``include:``), apply ``key.sub=value`` overrides, validate."""
    raw = _read_yaml(Path(path), seen=())
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        _set_dotted(raw, key.strip(), yaml.safe_load(value))
    return from_dict(ExperimentConfig, raw, "")


def read_yaml_with_includes(path: str | Path) -> dict[str, Any]:
    """The raw YAML of ``path`` with its ``include:`` files merged in, unvalidated (for tools that need one section)."""
    return _read_yaml(Path(path), seen=())


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    """Write the resolved config atomically."""
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


# Keys renamed since a release: the config.yml of an older run (reused, resumed, converted) still loads.
RENAMED_KEYS = {"model.attention_impl": "attention"}


def from_dict(cls: type, data: dict[str, Any] | None, prefix: str) -> Any:
    """Build dataclass ``cls`` from ``data``, checking keys and types; nested dataclasses recurse."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {type(data).__name__}: {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if dotted in RENAMED_KEYS and RENAMED_KEYS[dotted] not in data:
            key = RENAMED_KEYS[dotted]
        if key not in names:
            raise ConfigError(f"unknown config key {dotted!r}" + _suggest(key, names)
                              + f" (valid keys here: {', '.join(names)})")
        kwargs[key] = _coerce(hints[key], value, dotted)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, dotted: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, dotted)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, dotted)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{dotted}: {value!r} matches none of {tp}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{dotted} must be a list, got {value!r}")
        (inner,) = typing.get_args(tp) or (Any,)
        return [_coerce(inner, v, f"{dotted}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{dotted} must be a mapping, got {value!r}")
        _, inner = typing.get_args(tp) or (Any, Any)
        return {k: _coerce(inner, v, f"{dotted}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{dotted} must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{dotted} must be an integer, got {value!r}")
        return int(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{dotted} must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{dotted} must be a string, got {value!r}")
        return str(value)
    raise AssertionError(f"unsupported config type {tp} at {dotted}")


def _read_yaml(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    path = path.resolve()
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    if path in seen:
        raise ConfigError(f"config include cycle: {' -> '.join(map(str, seen + (path,)))}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    includes = raw.pop("include", []) or []
    if isinstance(includes, str):
        includes = [includes]
    merged: dict[str, Any] = {}
    for inc in includes:
        _deep_merge(merged, _read_yaml(path.parent / inc, seen + (path,)))
    _deep_merge(merged, raw)
    return merged


def _deep_merge(base: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def _suggest(key: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(options), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _positive(obj: Any, section: str, keys: tuple[str, ...]) -> None:
    for key in keys:
        value = getattr(obj, key)
        if value < 1:
            raise ConfigError(f"{section}.{key} must be >= 1, got {value}")
