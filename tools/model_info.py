"""Print a model's architecture, parameter counts and training FLOPs per token.

    python tools/model_info.py configs/model/pythia_410m.yml [--seq-len 1024]

Counts come from the model built on the meta device (no memory is allocated), so they are the real
module tree's, not a formula's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from neox.errors import ConfigError  # noqa: E402
from neox.model import ModelConfig, build_model, count_parameters, flops_per_token  # noqa: E402


def load_model_config(path: str) -> ModelConfig:
    """The model section of an experiment (``include:`` followed, as train.py reads it) or of a model file."""
    from neox.config import from_dict, read_yaml_with_includes

    raw = read_yaml_with_includes(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
        raise KeyError("model")
    return from_dict(ModelConfig, raw["model"], "model")


def model_info(cfg: ModelConfig, seq_len_tokens: int) -> dict[str, int | float | str]:
    model = build_model(cfg, device="meta")
    return {
        "layers": cfg.num_layers,
        "hidden": cfg.hidden_size,
        "heads": cfg.num_heads,
        "head_dim": cfg.head_dim,
        "rotary_dims": cfg.rotary_dims,
        "ffn": cfg.ffn_size,
        "vocab": cfg.vocab_size,
        "vocab_padded": cfg.padded_vocab_size,
        "parallel_residual": str(cfg.parallel_residual),
        "total_params": count_parameters(model),
        "non_embedding_params": count_parameters(model, exclude_embeddings=True),
        "seq_len": seq_len_tokens,
        "train_flops_per_token": flops_per_token(cfg, seq_len_tokens),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="experiment YAML with a model: section")
    parser.add_argument("--seq-len", type=int, default=None,
                        help="sequence length for the attention FLOPs term (default: model.max_seq_len_tokens)")
    args = parser.parse_args(argv)
    try:
        cfg = load_model_config(args.config)
    except KeyError:
        parser.error(f"{args.config} has no 'model:' section (nor does any file it includes); add one (see configs/model/)")
    except (ConfigError, OSError) as exc:
        parser.error(str(exc))
    seq_len = args.seq_len if args.seq_len is not None else cfg.max_seq_len_tokens
    if seq_len < 1:
        parser.error(f"--seq-len must be >= 1, got {seq_len}")
    for key, value in model_info(cfg, seq_len).items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
