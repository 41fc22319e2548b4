"""The model's configuration: GPT-NeoX / Pythia shapes (docs/methods.md, "Pythia")."""

from __future__ import annotations

from dataclasses import dataclass

from neox.errors import ConfigError  # noqa: F401  # re-exported: neox.model.config.ConfigError


@dataclass
class ModelConfig:
    num_layers: int = 2
    hidden_size: int = 64
    num_heads: int = 4
    # Tokenizer vocabulary; the embedding is padded up to a multiple of make_vocab_size_divisible_by
    # (Pythia: 50,277 -> 50,304) so the matmuls stay aligned.
    vocab_size: int = 50277
    make_vocab_size_divisible_by: int = 128
    # Rotary position cache length; the training sequence may be shorter.
    max_seq_len_tokens: int = 2048
    intermediate_size: int | None = None  # None: 4 * hidden_size
    rotary_pct: float = 0.25  # Pythia rotates 25% of each head's dims
    rotary_base: float = 10000.0
    layernorm_eps: float = 1e-5
    parallel_residual: bool = True  # GPT-NeoX: x + attn(ln1(x)) + mlp(ln2(x))
    init_std: float | None = None  # None: small_init, sqrt(2 / (5 * hidden_size))
    # "sdpa": torch's scaled_dot_product_attention (it picks its own flash/efficient/math kernel);
    # "flash": the flash-attn package's kernel, CUDA and bf16/fp16 only (DeepSpeed bf16 or autocast).
    # Checked once at start-up (check_attention_backend), never silently swapped for the other.
    attention: str = "sdpa"
    dropout: float = 0.0
    # torch.compile each transformer block in place (compile_layers); modules carrying hooks (the
    # alignment probes) stay eager. parallel.pipe=1 and parallel.tensor=1 only.
    compile: bool = False
    # Recompute each transformer block in the backward (non-reentrant torch.utils.checkpoint), as the Pythia
    # configs did; the pipeline path has its own knob, parallel.activation_checkpoint_interval.
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        for key in ("num_layers", "hidden_size", "num_heads", "vocab_size", "make_vocab_size_divisible_by",
                    "max_seq_len_tokens"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"model.{key} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"model.hidden_size ({self.hidden_size}) must be divisible by model.num_heads "
                f"({self.num_heads}); pick a head count that divides it")
        if not 0.0 <= self.rotary_pct <= 1.0:
            raise ConfigError(f"model.rotary_pct must be in [0, 1], got {self.rotary_pct}")
        if self.rotary_dims % 2:
            raise ConfigError(
                f"model.rotary_pct={self.rotary_pct} gives {self.rotary_dims} rotary dims per head "
                f"(head size {self.head_dim}); it must be even")
        if self.attention not in ("sdpa", "flash"):
            raise ConfigError(f"model.attention must be 'sdpa' or 'flash', got {self.attention!r}")
        for key in ("compile", "activation_checkpointing"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"model.{key} must be true or false, got {getattr(self, key)!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def rotary_dims(self) -> int:
        return int(self.head_dim * self.rotary_pct)

    @property
    def ffn_size(self) -> int:
        return self.intermediate_size or 4 * self.hidden_size

    @property
    def padded_vocab_size(self) -> int:
        m = self.make_vocab_size_divisible_by
        return -(-self.vocab_size // m) * m
