#!/usr/bin/env python
"""Tokenize jsonl(.zst) documents with a domain field into per-domain megatron-core .bin/.idx files.

    python tools/preprocess_data.py --input data/minipile --output-dir data/minipile_tok \
        --tokenizer data/minipile/tokenizer.json --workers 4
    python tools/preprocess_data.py --input pile/train/*.jsonl.zst --val-input pile/val.jsonl.zst \
        --domain-key meta.pile_set_name --output-dir data/pile_tok --tokenizer 20B_tokenizer.json

The library code is neox.data.preprocess; this file only makes it runnable from a checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from neox.data.preprocess import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
