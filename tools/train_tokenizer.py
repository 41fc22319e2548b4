#!/usr/bin/env python3
"""Train a byte-level BPE tokenizer (GPT-NeoX style: <|endoftext|> = 0, <|padding|> = 1) on a corpus.

    python tools/train_tokenizer.py --input data/minipile_tiny --vocab-size 8192 --out data/tok8k.json

Reads CORPUS_DIR/<domain>/train.jsonl (the layout tools/build_minipile.py writes), at most
--max-mb-per-domain MB from each domain so every domain weighs the same. Deterministic; written atomically.
"""
import sys, pathlib; sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # noqa: E401,E702

import argparse
import json
from pathlib import Path

from neox.data.tokenizer import TokenizerError, train_tokenizer_on_corpus


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, required=True, help="corpus directory with <domain>/train.jsonl")
    parser.add_argument("--vocab-size", type=int, required=True, help="vocabulary size including special tokens")
    parser.add_argument("--out", type=Path, required=True, help="tokenizer.json to write")
    parser.add_argument("--max-mb-per-domain", type=float, default=2.0, help="text used per domain (MB)")
    args = parser.parse_args(argv)
    if args.max_mb_per_domain <= 0:
        parser.error(f"--max-mb-per-domain must be > 0, got {args.max_mb_per_domain}")
    try:
        info = train_tokenizer_on_corpus(args.input, args.vocab_size, args.out,
                                         max_bytes_per_domain=int(args.max_mb_per_domain * 1024 * 1024))
    except TokenizerError as exc:
        print(f"train_tokenizer: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
