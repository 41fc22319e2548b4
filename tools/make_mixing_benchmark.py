#!/usr/bin/env python
"""Corpus variants of the demo corpus on which mixers can be told apart (benchmarks/mixing_quality.py).

    python tools/make_mixing_benchmark.py --corpus data/demo/corpus --tokenizer data/demo/tokenizer.json \
        --out data/mixing_bench

Each variant is written through the real pipeline (jsonl corpus -> tools/preprocess_data.py's library ->
per-domain ``.bin/.idx`` + ``manifest.json``) into ``OUT/<variant>/tokens`` with ``OUT/<variant>/variant.json``
declaring its *target* (the domains whose mean validation loss is the score):

- ``clean``: the demo corpus unchanged (control). Target: every domain.
- ``noisy``: 8 demo domains kept; 8 junk domains of the kind a crawl has: 4 of uniformly random tokens
  (unlearnable) and 4 of one ~600-token passage repeated (learned in a few steps, then useless).
  Target: the 8 clean domains. Its *oracle* is the static mixture with every junk domain at the
  per-domain floor (``data.min_samples_per_domain``) and the clean domains uniform.
- ``imbalanced``: the demo domains cut to very different sizes (4 full, 4 at 1/8, 3 at 1/32, 3 at ~3k tokens,
  a few dozen sequences that uniform sampling repeats many times in a run), so natural != uniform and
  over-repetition hurts. Target: every domain (their validation splits are not cut).
- ``heldout``: one domain (``code_python``) is never trained on: its train documents move to a separate
  ``target`` split that only the mixers' gradient statistics read (``mixing.target_split``); the score
  is its validation loss (DoGE's out-of-domain setting). Target: that domain.

The variants are derived deterministically from the corpus and ``--seed``; the domain choices are fixed
names, so the tool refuses a corpus that lacks them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

VARIANTS = ("clean", "noisy", "imbalanced", "heldout")
# noisy: the clean domains kept; the junk domains take the places of the others.
NOISY_CLEAN = ("brown", "code_python", "email", "legal", "literature", "math", "multilingual", "wikipedia")
RANDOM_JUNK = ("junk_random_1", "junk_random_2", "junk_random_3", "junk_random_4")
REPEAT_JUNK = ("junk_repeat_1", "junk_repeat_2", "junk_repeat_3", "junk_repeat_4")
# The sources of the repeated passages (one passage of each, never the clean domains' text).
REPEAT_SOURCES = ("code_c_perl", "dictionary", "manuals", "speeches")
REPEAT_PASSAGE_TOKENS = 600
# imbalanced: train-token budget per domain as a fraction of its size (None = the fixed tiny budget).
IMBALANCED_FULL = ("brown", "code_go", "legal", "wikipedia")
IMBALANCED_EIGHTH = ("bible", "email", "literature", "math")
IMBALANCED_32ND = ("code_c_perl", "dictionary", "multilingual")
IMBALANCED_TINY_TOKENS = 3000  # ~23 sequences of 128 tokens
HELDOUT = "code_python"


class BenchmarkError(ValueError):
    pass


def read_jsonl(path: Path) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")


class Source:
    """The demo corpus (``DIR/<domain>/{train,val}.jsonl``) and its tokenizer."""

    def __init__(self, corpus: Path, tokenizer_path: Path):
        from tokenizers import Tokenizer

        self.corpus = corpus
        self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self.domains = sorted(p.name for p in corpus.iterdir() if (p / "train.jsonl").is_file())
        needed = set(NOISY_CLEAN) | set(REPEAT_SOURCES) | set(IMBALANCED_FULL) | set(IMBALANCED_EIGHTH) \
            | set(IMBALANCED_32ND) | {HELDOUT}
        missing = sorted(needed - set(self.domains))
        if missing:
            raise BenchmarkError(f"{corpus} lacks the domain(s) {missing} the benchmark variants are built from; "
                                 f"rebuild the demo corpus with `make demo-data`")

    def docs(self, domain: str, split: str) -> list[dict]:
        return read_jsonl(self.corpus / domain / f"{split}.jsonl")

    def num_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text).ids)

    def token_counts(self, docs: list[dict]) -> list[int]:
        return [len(e.ids) for e in self.tokenizer.encode_batch([r["text"] for r in docs])]


def _doc(domain: str, text: str, i: int) -> dict:
    return {"id": f"bench:{domain}:{i}", "domain": domain, "text": text}


def random_docs(src: Source, domain: str, like: list[dict], rng: np.random.Generator) -> list[dict]:
    """Documents of uniformly random token ids (decoded to text), as many and as long as ``like``'s."""
    vocab = src.tokenizer.get_vocab_size()
    out = []
    for i, n in enumerate(src.token_counts(like)):
        ids = rng.integers(2, vocab, size=max(n, 16)).tolist()  # 0/1 are end-of-document and padding
        out.append(_doc(domain, src.tokenizer.decode(ids), i))
    return out


def repeat_docs(src: Source, domain: str, passage: str, like: list[dict]) -> list[dict]:
    """Documents made of one passage repeated, as many and about as long as ``like``'s."""
    per = max(src.num_tokens(passage), 1)
    return [_doc(domain, "\n".join([passage] * max(1, round(n / per))), i)
            for i, n in enumerate(src.token_counts(like))]


def passage_of(src: Source, domain: str, tokens: int) -> str:
    """The first ``tokens`` tokens of the domain's longest train document, as text."""
    text = max(src.docs(domain, "train"), key=lambda r: len(r["text"]))["text"]
    ids = src.tokenizer.encode(text).ids[:tokens]
    return src.tokenizer.decode(ids)


def cut_to_tokens(src: Source, docs: list[dict], budget: int) -> list[dict]:
    """The first documents up to ``budget`` tokens (the last one truncated), at least one document."""
    out, used = [], 0
    for r, enc in zip(docs, src.tokenizer.encode_batch([r["text"] for r in docs])):
        ids = enc.ids
        if used + len(ids) >= budget:
            out.append({**r, "text": src.tokenizer.decode(ids[: max(budget - used, 1)])})
            break
        out.append(r)
        used += len(ids)
    return out


def build_variant(src: Source, variant: str, seed: int) -> tuple[dict[str, dict[str, list[dict]]], dict]:
    """{domain: {split: docs}} and the variant's declaration."""
    rng = np.random.default_rng([seed, VARIANTS.index(variant)])
    docs: dict[str, dict[str, list[dict]]] = {}
    info: dict = {"variant": variant, "oracle_weights": None}
    if variant == "clean":
        docs = {d: {s: src.docs(d, s) for s in ("train", "val")} for d in src.domains}
        info["target_domains"] = list(src.domains)
    elif variant == "noisy":
        docs = {d: {s: src.docs(d, s) for s in ("train", "val")} for d in NOISY_CLEAN}
        shapes = [d for d in src.domains if d not in NOISY_CLEAN]  # junk documents take these sizes
        for i, name in enumerate(RANDOM_JUNK):
            like = shapes[i % len(shapes)]
            docs[name] = {s: random_docs(src, name, src.docs(like, s), rng) for s in ("train", "val")}
        for name, source in zip(REPEAT_JUNK, REPEAT_SOURCES):
            passage = passage_of(src, source, REPEAT_PASSAGE_TOKENS)
            docs[name] = {s: repeat_docs(src, name, passage, src.docs(source, s)) for s in ("train", "val")}
        info["target_domains"] = list(NOISY_CLEAN)
        # The floor binds for the junk (min_samples_per_domain); the rest is spread over the clean domains.
        info["oracle_weights"] = {d: (1.0 / len(NOISY_CLEAN) if d in NOISY_CLEAN else 0.0) for d in docs}
    elif variant == "imbalanced":
        for d in src.domains:
            train = src.docs(d, "train")
            total = sum(src.token_counts(train))
            if d in IMBALANCED_FULL:
                budget = total
            elif d in IMBALANCED_EIGHTH:
                budget = total // 8
            elif d in IMBALANCED_32ND:
                budget = total // 32
            else:
                budget = IMBALANCED_TINY_TOKENS
            docs[d] = {"train": cut_to_tokens(src, train, budget), "val": src.docs(d, "val")}
        info["target_domains"] = list(src.domains)
    elif variant == "heldout":
        for d in src.domains:
            docs[d] = {"val": src.docs(d, "val")}
            docs[d]["target" if d == HELDOUT else "train"] = src.docs(d, "train")
        info["target_domains"] = [HELDOUT]
        info["target_split"] = "target"
    else:
        raise BenchmarkError(f"unknown variant {variant!r}; choose from {VARIANTS}")
    info["domains"] = sorted(docs)
    info["train_domains"] = sorted(d for d in docs if "train" in docs[d])
    return docs, info


def write_variant(src: Source, variant: str, out: Path, tokenizer: Path, seed: int, workers: int = 1) -> dict:
    """OUT/<variant>/{corpus,tokens,variant.json}, replaced atomically (a partial variant is never left)."""
    from neox.data.preprocess import PreprocessConfig, preprocess

    docs, info = build_variant(src, variant, seed)
    final = out / variant
    tmp = out / f".{variant}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    corpus = tmp / "corpus"
    extra = []
    for d, splits in docs.items():
        for split, records in splits.items():
            if split in ("train", "val"):
                write_jsonl(corpus / d / f"{split}.jsonl", records)
            else:  # a split of its own: preprocess reads it as a plain jsonl input of that split
                path = tmp / f"{split}.jsonl"
                write_jsonl(path, records)
                extra.append((split, str(path)))
    splits = {s for s, _ in extra}
    assert len(splits) <= 1, splits
    preprocess(PreprocessConfig(inputs=(str(corpus), *[p for _, p in extra]), output_dir=str(tmp / "tokens"),
                                tokenizer_path=str(tokenizer), split=next(iter(splits), "train"),
                                workers=workers, progress=False))
    manifest = json.loads((tmp / "tokens" / "manifest.json").read_text())
    info["tokens"] = {split: {d: e["tokens"] for d, e in per.items()} for split, per in manifest["splits"].items()}
    (tmp / "variant.json").write_text(json.dumps({**info, "seed": seed}, indent=2) + "\n")
    shutil.copyfile(tokenizer, tmp / "tokenizer.json")  # the runs check their data against it
    if info["oracle_weights"] is not None:  # for mixing.static={kind: file, path: ...}
        (tmp / "oracle_weights.json").write_text(json.dumps(info["oracle_weights"], indent=2) + "\n")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return info


def read_variant(path: str | Path) -> dict:
    """``variant.json`` of a built variant directory, with a clear error if it is missing."""
    p = Path(path) / "variant.json"
    if not p.is_file():
        raise BenchmarkError(f"{p} does not exist; build the variants with tools/make_mixing_benchmark.py")
    return json.loads(p.read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default="data/demo/corpus", help="the demo corpus (make demo-data)")
    ap.add_argument("--tokenizer", default="data/demo/tokenizer.json")
    ap.add_argument("--out", default="data/mixing_bench")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {VARIANTS}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args(argv)
    try:
        variants = [v for v in args.variants.split(",") if v]
        bad = [v for v in variants if v not in VARIANTS]
        if bad:
            raise BenchmarkError(f"--variants: unknown {bad}; choose from {', '.join(VARIANTS)}")
        for p, what in ((Path(args.corpus), "--corpus"), (Path(args.tokenizer), "--tokenizer")):
            if not p.exists():
                raise BenchmarkError(f"{what} {p} does not exist; build the demo corpus with `make demo-data`")
        src = Source(Path(args.corpus), Path(args.tokenizer))
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for v in variants:
            info = write_variant(src, v, out, Path(args.tokenizer), args.seed, args.workers)
            print(f"{v}: {len(info['domains'])} domains ({len(info['train_domains'])} trained), "
                  f"target {info['target_domains']} -> {out / v}", file=sys.stderr)
    except BenchmarkError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
