"""GPT-NeoX / Pythia model: parameter names follow transformers' GPTNeoXForCausalLM."""

from neox.errors import ConfigError
from neox.model.config import ModelConfig
from neox.model.gpt_neox import (
    GPTNeoX,
    EmbeddingLayer,
    FinalLayer,
    TransformerLayer,
    build_model,
    check_attention_backend,
    compile_layers,
    count_parameters,
    flops_per_token,
    hf_config,
    init_weights,
    per_token_loss,
)

__all__ = [
    "ConfigError", "ModelConfig", "GPTNeoX", "EmbeddingLayer", "TransformerLayer", "FinalLayer",
    "build_model", "count_parameters", "flops_per_token", "hf_config", "init_weights", "per_token_loss",
    "check_attention_backend", "compile_layers",
]
