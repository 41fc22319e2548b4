"""Export a checkpoint to a transformers `GPTNeoXForCausalLM` directory (config, safetensors, tokenizer).

Our parameter names are already transformers' (neox/model/gpt_neox.py), so the export is a checked
copy of `model.safetensors` plus `hf_config(cfg)` and the run's tokenizer wrapped as a
`PreTrainedTokenizerFast`. The embedding keeps its padded rows (vocab padded to a multiple of
`model.make_vocab_size_divisible_by`, as Pythia's 50,304 rows for a 50,277-token tokenizer).

Public API:
    resolve_checkpoint(path) -> Path            RUN_DIR, RUN_DIR/checkpoints or CHECKPOINT_DIR -> checkpoint dir
    load_checkpoint_config(ckpt_dir) -> dict    the resolved experiment config saved with the checkpoint
    export_hf(source, out_dir, dtype="float32", tokenizer=None, overwrite=False) -> Path
    max_logit_diff(ckpt_dir, hf_dir, input_ids) -> float     our model vs the exported one
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from neox.data.tokenizer import EOD_TOKEN, PAD_TOKEN

WEIGHTS_FILE = "model.safetensors"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ExportError(ValueError):
    """A checkpoint or output directory the exporter cannot use; the message says what to change."""


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """The checkpoint directory for RUN_DIR, RUN_DIR/checkpoints or a checkpoint directory itself.

    Resolution is the trainer's own (neox.training.checkpoint): a run directory goes through
    `checkpoints/latest`, which is written only after a checkpoint is complete.
    """
    from neox.training.checkpoint import LATEST
    from neox.training.checkpoint import resolve_checkpoint as trainer_resolve

    path = Path(path)
    if not path.exists():
        raise ExportError(f"{path} does not exist; pass a run directory or a checkpoint directory")
    if path.name == "checkpoints" and (path / LATEST).is_file():
        path = path.parent
    from neox.training.checkpoint import CheckpointError

    try:
        ckpt = trainer_resolve(path)
    except CheckpointError as e:  # damaged: the message names the checkpoint and the file
        raise ExportError(str(e)) from None
    except FileNotFoundError as e:
        if path.name.startswith("step_") or (path / "trainer.json").exists():
            contents = ", ".join(sorted(p.name for p in path.iterdir())[:8]) or "nothing"
            raise ExportError(f"checkpoint {path} has no {WEIGHTS_FILE} (or config.yml); it holds: {contents}") from None
        raise ExportError(f"no checkpoint found under {path}: {e}. Has the run saved a checkpoint yet "
                          f"(checkpoint.interval_steps)?") from None
    if not (ckpt / WEIGHTS_FILE).is_file():
        contents = ", ".join(sorted(p.name for p in ckpt.iterdir())[:8]) or "nothing"
        raise ExportError(f"{ckpt} has no {WEIGHTS_FILE} (the consolidated fp32 weights the trainer writes); "
                          f"it holds: {contents}")
    return ckpt


def load_checkpoint_config(ckpt_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The experiment config saved with the checkpoint (or, failing that, with its run)."""
    import yaml

    ckpt_dir = Path(ckpt_dir)
    # checkpoint dir, then the run dir two levels up (RUN_DIR/checkpoints/step_N).
    for candidate in (ckpt_dir / "config.yml", ckpt_dir.parent.parent / "config.yml"):
        if candidate.is_file():
            cfg = yaml.safe_load(candidate.read_text())
            if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
                raise ExportError(f"{candidate} has no 'model:' section; it is not a run config")
            return cfg
    raise ExportError(f"no config.yml in {ckpt_dir} or its run directory; the model shape is unknown")


def find_tokenizer(ckpt_dir: Path, explicit: str | os.PathLike[str] | None,
                   run_cfg: dict[str, Any] | None = None) -> Path | None:
    """--tokenizer if given, else tokenizer.json next to the checkpoint or in its run directory, else the
    config's data.tokenizer (relative to the working directory, as for training)."""
    if explicit is not None:
        path = Path(explicit)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise ExportError(f"--tokenizer {explicit}: no tokenizer.json there")
        return path
    candidates = [ckpt_dir / "tokenizer.json", ckpt_dir.parent.parent / "tokenizer.json"]
    data_tokenizer = ((run_cfg or {}).get("data") or {}).get("tokenizer")
    if isinstance(data_tokenizer, str):
        candidates.append(Path(data_tokenizer))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return None


def _model_config(ckpt: Path) -> Any:
    """The checkpoint's ModelConfig, validated as the trainer validates it."""
    from neox.errors import ConfigError
    from neox.training.checkpoint import load_model_config

    try:
        return load_model_config(ckpt)
    except (ConfigError, TypeError) as e:
        raise ExportError(f"{ckpt}/config.yml: {e}") from None


def _check_keys(weights: dict[str, torch.Tensor], hf_cfg: Any) -> None:
    """The checkpoint must hold exactly GPTNeoXForCausalLM's persistent weights, with the same shapes."""
    from transformers import GPTNeoXForCausalLM

    with torch.device("meta"):
        reference = GPTNeoXForCausalLM(hf_cfg).state_dict()
    missing = sorted(set(reference) - set(weights))
    unexpected = sorted(set(weights) - set(reference))
    if missing or unexpected:
        def few(names: list[str]) -> str:
            return ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")
        raise ExportError(
            "checkpoint weights do not match GPTNeoXForCausalLM built from the checkpoint's model config: "
            + (f"missing {len(missing)}: {few(missing)}; " if missing else "")
            + (f"unexpected {len(unexpected)}: {few(unexpected)}" if unexpected else "")
            + ". Is config.yml the one this checkpoint was trained with?")
    wrong = [f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}" for k, v in reference.items()
             if tuple(weights[k].shape) != tuple(v.shape)]
    if wrong:
        raise ExportError("checkpoint weight shapes differ from the model config (checkpoint vs config): "
                          + "; ".join(wrong[:5]))


def _save_tokenizer(tokenizer_json: Path, out: Path, model_max_length: int) -> None:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    vocab = Tokenizer.from_file(str(tokenizer_json)).get_vocab()
    if EOD_TOKEN not in vocab:
        raise ExportError(f"{tokenizer_json} has no {EOD_TOKEN} token; the trainer's tokenizers always do")
    # Without a padding token (not in every tokenizer) batched evaluation pads with end-of-text.
    pad = PAD_TOKEN if PAD_TOKEN in vocab else EOD_TOKEN
    tok = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_json), eos_token=EOD_TOKEN, bos_token=EOD_TOKEN,
                                  unk_token=EOD_TOKEN, pad_token=pad, model_max_length=model_max_length)
    tok.save_pretrained(str(out))
    # AutoTokenizer must build this exact tokenizer.json, not a model-type default (GPTNeoXTokenizer).
    config_path = out / "tokenizer_config.json"
    tok_config = json.loads(config_path.read_text())
    tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(tok_config, indent=2) + "\n")


def _apply_umask(directory: Path) -> None:
    """mkdtemp makes a 0700 directory (and safetensors may write 0600 files): give the export the
    permissions an ordinary `mkdir` + write would have, so other users of a shared cluster can read it."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for path in directory.iterdir():
        path.chmod(0o666 & ~umask)


def export_hf(source: str | os.PathLike[str], out_dir: str | os.PathLike[str], dtype: str = "float32",
              tokenizer: str | os.PathLike[str] | None = None, overwrite: bool = False) -> Path:
    """Write a transformers GPTNeoXForCausalLM directory for the checkpoint at/under `source`.

    The output appears complete or not at all (built in a temporary sibling directory, then renamed).
    Without a tokenizer (synthetic-data runs) only the model is written, and a warning says so.
    """
    from safetensors.torch import load_file, save_file

    from neox.model.gpt_neox import hf_config

    if dtype not in DTYPES:
        raise ExportError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ExportError(f"output {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"output directory {out} is not empty; choose another or pass --overwrite")

    ckpt = resolve_checkpoint(source)
    run_cfg = load_checkpoint_config(ckpt)
    model_cfg = _model_config(ckpt)
    tokenizer_json = find_tokenizer(ckpt, tokenizer, run_cfg)
    pad_id = None
    if tokenizer_json is not None:
        from tokenizers import Tokenizer
        pad_id = Tokenizer.from_file(str(tokenizer_json)).token_to_id(PAD_TOKEN)
    hf_cfg = hf_config(model_cfg, architectures=["GPTNeoXForCausalLM"], pad_token_id=pad_id, dtype=dtype)

    weights = load_file(str(ckpt / WEIGHTS_FILE))
    # A checkpoint may carry the rotary inverse-frequency buffer; it is recomputed from the config.
    weights = {k: v for k, v in weights.items() if not k.endswith("rotary_emb.inv_freq")}
    _check_keys(weights, hf_cfg)
    torch_dtype = DTYPES[dtype]
    weights = {k: v.to(torch_dtype).contiguous() for k, v in weights.items()}

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        hf_cfg.save_pretrained(str(tmp))
        save_file(weights, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        if tokenizer_json is not None:
            _save_tokenizer(tokenizer_json, tmp, model_cfg.max_seq_len_tokens)
        trainer_state = ckpt / "trainer.json"
        provenance = {
            "source_checkpoint": str(ckpt.resolve()), "dtype": dtype,
            "tokenizer": None if tokenizer_json is None else str(tokenizer_json.resolve()),
            "trainer_state": json.loads(trainer_state.read_text()) if trainer_state.is_file() else None,
        }
        (tmp / "acodm_export.json").write_text(json.dumps(provenance, indent=2) + "\n")
        shutil.copyfile(ckpt / "config.yml" if (ckpt / "config.yml").is_file() else ckpt.parent.parent / "config.yml",
                        tmp / "training_config.yml")
        _apply_umask(tmp)
        if out.exists():
            # Move the old directory aside first so `out` is never a mix of old and new files.
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, trash / out.name)
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if tokenizer_json is None:
        import warnings
        warnings.warn(f"no tokenizer.json found for {ckpt}: exported the model only; AutoTokenizer will not "
                      f"load {out}. Pass --tokenizer PATH to include one.", stacklevel=2)
    return out


@torch.no_grad()
def max_logit_diff(ckpt_dir: str | os.PathLike[str], hf_dir: str | os.PathLike[str],
                   input_ids: torch.Tensor) -> float:
    """max |our logits - transformers' logits| over a (B, T) batch of token ids, both in fp32 on CPU."""
    from transformers import AutoModelForCausalLM

    from neox.training.checkpoint import load_model

    ours = load_model(resolve_checkpoint(ckpt_dir)).float()  # the trainer's loader: fp32, eval mode
    theirs = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    logits_ours = ours(input_ids)  # (B, T, V)
    logits_theirs = theirs(input_ids).logits  # (B, T, V)
    return float((logits_ours - logits_theirs).abs().max())
