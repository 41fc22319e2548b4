"""Random-token domains in the preprocess layout, for tests and benchmarks (no tokenizer, no corpus needed)."""

from __future__ import annotations

import os
import shutil

import numpy as np

from neox.data.indexed import megatron_indexed_dataset
from neox.data.preprocess import _prepare_output, _publish, token_dtype, write_manifest


def write_synthetic_domains(
    out_dir: str,
    num_domains: int,
    docs_per_domain: int,
    vocab_size: int,
    seed: int,
    split: tuple[str, ...] = ("train", "val"),
    mean_doc_tokens: int = 64,
) -> dict:
    """Random-token domains in exactly the preprocess layout (no tokenizer needed).

    Domain ``k`` ("domain_00", ...) draws tokens from a Zipf-like distribution over its own random
    ranking of the vocabulary, so domains differ in their statistics and a model can tell them
    apart; id 0 is the end-of-document token that ends every document. The manifest records
    tokenizer name "synthetic" and sha256 null. Returns the manifest.
    """
    IndexedDatasetBuilder = megatron_indexed_dataset().IndexedDatasetBuilder

    if num_domains < 1 or docs_per_domain < 1 or mean_doc_tokens < 1:
        raise ValueError("num_domains, docs_per_domain and mean_doc_tokens must be >= 1")
    if vocab_size < 3:
        raise ValueError(f"vocab_size must be >= 3 (EOD, padding, one word), got {vocab_size}")
    splits = (split,) if isinstance(split, str) else tuple(split)
    dtype = token_dtype(vocab_size)
    tmp_dir = _prepare_output(out_dir, overwrite=False)
    eod_id = 0
    try:
        names = [f"domain_{k:02d}" for k in range(num_domains)]
        stats: dict[str, dict[str, dict]] = {}
        words = np.arange(2, vocab_size)  # skip EOD (0) and padding (1)
        zipf = 1.0 / np.arange(1, words.size + 1) ** 1.1
        zipf /= zipf.sum()
        for split_index, split_name in enumerate(splits):
            os.makedirs(os.path.join(tmp_dir, split_name))
            stats[split_name] = {}
            for k, name in enumerate(names):
                rng_domain = np.random.default_rng([seed, k])  # same word ranking in every split
                ranking = rng_domain.permutation(words)
                rng = np.random.default_rng([seed, k, split_index + 1])
                lengths = rng.integers(1, 2 * mean_doc_tokens, size=docs_per_domain)  # words per doc
                tokens = ranking[rng.choice(words.size, size=int(lengths.sum()), p=zipf)]
                builder = IndexedDatasetBuilder(os.path.join(tmp_dir, split_name, name + ".bin"), dtype=dtype)
                pos = 0
                for n in lengths.tolist():
                    builder.add_document(np.append(tokens[pos : pos + n], eod_id), [n + 1])
                    pos += n
                builder.finalize(os.path.join(tmp_dir, split_name, name + ".idx"))
                stats[split_name][name] = {"documents": int(docs_per_domain),
                                           "tokens": int(lengths.sum() + docs_per_domain),
                                           "max_token_id": int(max(tokens.max(), eod_id))}
        tokenizer = {"name": "synthetic", "path": None, "vocab_size": int(vocab_size), "eod_id": eod_id,
                     "sha256": None}
        manifest = write_manifest(tmp_dir, tokenizer, dtype, stats, {n: n for n in names},
                                  tool="tests/synthetic_data.py")
        _publish(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return manifest
