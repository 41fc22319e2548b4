"""Checkpoint -> transformers GPTNeoXForCausalLM export: logits parity, tokenizer, errors, atomicity."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from neox.hf_export import ExportError, export_hf, max_logit_diff
from neox.model.config import ModelConfig
from neox.model.gpt_neox import GPTNeoX, build_model

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("the cat sat on a mat while data mixing weights moved towards code and math; "
         "an actor critic learns which domain helps the model most, step after step.").split()


def train_tokenizer(path: Path, vocab_size: int = 240) -> None:
    """A tiny byte-level BPE with the trainer's special tokens at ids 0 and 1."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|padding|>"],
                                  show_progress=False)
    gen = torch.Generator().manual_seed(0)
    corpus = [" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (40,), generator=gen))
              for _ in range(200)]
    tok.train_from_iterator(corpus, trainer)
    tok.save(str(path))


def make_run(run_dir: Path, step: int = 10, with_tokenizer: bool = True, seed: int = 0) -> Path:
    """A run directory in the trainer's layout holding one checkpoint of a random tiny GPTNeoX."""
    run_dir.mkdir(parents=True, exist_ok=True)
    vocab_size = 256
    if with_tokenizer:
        train_tokenizer(run_dir / "tokenizer.json")
        from tokenizers import Tokenizer
        vocab_size = Tokenizer.from_file(str(run_dir / "tokenizer.json")).get_vocab_size()
    model_cfg = dict(num_layers=2, hidden_size=64, num_heads=4, vocab_size=vocab_size,
                     make_vocab_size_divisible_by=128, max_seq_len_tokens=128)
    cfg = ModelConfig(**model_cfg)
    assert cfg.padded_vocab_size == 256
    torch.manual_seed(seed)
    model = build_model(cfg)
    with torch.no_grad():
        # Perturb every parameter (LayerNorms and biases start at 1/0) so that a swapped or dropped
        # tensor shows in the logits.
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    config = {"model": model_cfg, "data": {}, "mixing": {}, "optimizer": {}, "schedule": {}, "parallel": {},
              "checkpoint": {}, "logging": {}, "eval": {}, "deepspeed": {}, "seed": seed}
    (run_dir / "config.yml").write_text(yaml.safe_dump(config))
    ckpt = run_dir / "checkpoints" / f"step_{step:08d}"
    ckpt.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt / "model.safetensors"))
    (ckpt / "config.yml").write_text(yaml.safe_dump(config))
    (ckpt / "trainer.json").write_text(json.dumps({"step": step, "tokens": step * 1024}))
    (run_dir / "checkpoints" / "latest").write_text(ckpt.name)
    return run_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("run") / "run")


def test_export_matches_our_logits_and_tokenizer(run_dir, tmp_path):
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPTNeoXForCausalLM, PreTrainedTokenizerFast

    out = export_hf(run_dir, tmp_path / "hf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no temp dirs left behind
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(model) is GPTNeoXForCausalLM and model.dtype == torch.float32
    assert model.config.vocab_size == 256

    ckpt = run_dir / "checkpoints" / "step_00000010"
    cfg = ModelConfig(**yaml.safe_load((ckpt / "config.yml").read_text())["model"])
    ours = GPTNeoX.from_hf_state_dict(cfg, load_file(str(ckpt / "model.safetensors"))).eval()
    input_ids = torch.randint(0, cfg.vocab_size, (3, 50), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits_ours = ours(input_ids)
        logits_hf = model(input_ids).logits
    assert logits_hf.shape == (3, 50, 256)
    assert logits_ours.std() > 0.5  # weights large enough that a wrong mapping cannot hide
    assert (logits_ours - logits_hf).abs().max().item() <= 1e-5
    assert max_logit_diff(run_dir, out, input_ids) <= 1e-5

    tok = AutoTokenizer.from_pretrained(out)
    assert isinstance(tok, PreTrainedTokenizerFast)
    assert (tok.eos_token, tok.bos_token, tok.unk_token, tok.pad_token) == (
        "<|endoftext|>", "<|endoftext|>", "<|endoftext|>", "<|padding|>")
    assert (tok.eos_token_id, tok.pad_token_id) == (0, 1)
    assert (model.config.eos_token_id, model.config.pad_token_id) == (0, 1)
    text = "the actor learns which domain helps the model most, step after step."
    ids = tok(text)["input_ids"]
    assert ids == Tokenizer.from_file(str(run_dir / "tokenizer.json")).encode(text).ids
    assert len(ids) < len(text)  # merges are applied, not byte-per-token
    assert tok.decode(ids) == text


def test_cli_bfloat16_from_checkpoint_dir_with_verify(run_dir, tmp_path):
    ckpt = run_dir / "checkpoints" / "step_00000010"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "convert_to_hf.py"), str(ckpt), "-o",
                           str(tmp_path / "hf16"), "--dtype", "bfloat16", "--verify"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "max |logit difference|" in proc.stdout
    weights = load_file(str(tmp_path / "hf16" / "model.safetensors"))
    assert {v.dtype for v in weights.values()} == {torch.bfloat16}
    assert json.loads((tmp_path / "hf16" / "config.json").read_text())["dtype"] == "bfloat16"


def test_refuses_non_empty_output_unless_overwrite(run_dir, tmp_path):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(ExportError, match="not empty.*--overwrite"):
        export_hf(run_dir, out)
    assert (out / "keep.txt").read_text() == "user data"
    export_hf(run_dir, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_clear_errors(run_dir, tmp_path):
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(ExportError, match="no checkpoint found"):
        export_hf(empty, tmp_path / "out")

    broken = tmp_path / "broken" / "checkpoints"
    (broken / "step_00000005").mkdir(parents=True)
    (broken / "step_00000005" / "trainer.json").write_text("{}")
    (broken / "latest").write_text("step_00000005")
    with pytest.raises(ExportError, match="has no model.safetensors"):
        export_hf(tmp_path / "broken", tmp_path / "out")

    # A checkpoint whose tensor names do not match the config's model.
    bad = make_run(tmp_path / "bad", with_tokenizer=False)
    path = bad / "checkpoints" / "step_00000010" / "model.safetensors"
    weights = load_file(str(path))
    weights["gpt_neox.layers.1.mlp.fc_out.weight"] = weights.pop("gpt_neox.layers.1.mlp.dense_4h_to_h.weight")
    save_file(weights, str(path))
    with pytest.raises(ExportError, match=r"missing 1: gpt_neox\.layers\.1\.mlp\.dense_4h_to_h\.weight; "
                                          r"unexpected 1: gpt_neox\.layers\.1\.mlp\.fc_out\.weight"):
        export_hf(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]

    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "convert_to_hf.py"), str(empty), "-o",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "no checkpoint found" in proc.stderr and "Traceback" not in proc.stderr


def test_export_without_tokenizer_warns(tmp_path):
    run = make_run(tmp_path / "synthetic", with_tokenizer=False)
    with pytest.warns(UserWarning, match="--tokenizer"):
        out = export_hf(run, tmp_path / "hf")
    assert (out / "model.safetensors").is_file() and not (out / "tokenizer.json").exists()


def test_tokenizer_from_config_data_path(tmp_path):
    # The trainer's config names the tokenizer (data.tokenizer); with no copy in the run dir, use that.
    run = make_run(tmp_path / "run", with_tokenizer=False)
    train_tokenizer(tmp_path / "elsewhere.json")
    ckpt = run / "checkpoints" / "step_00000010"
    cfg = yaml.safe_load((ckpt / "config.yml").read_text())
    cfg["data"]["tokenizer"] = str(tmp_path / "elsewhere.json")
    (ckpt / "config.yml").write_text(yaml.safe_dump(cfg))
    out = export_hf(run, tmp_path / "hf")
    assert (out / "tokenizer.json").is_file()
    provenance = json.loads((out / "acodm_export.json").read_text())
    assert provenance["tokenizer"] == str((tmp_path / "elsewhere.json").resolve())
    assert provenance["trainer_state"] == {"step": 10, "tokens": 10240}
