"""Compare training runs: mean and per-domain validation perplexity vs step, domain weights,
final-perplexity and time-to-target tables.

    python tools/compare_runs.py RUN_A RUN_B ... -o OUT_DIR [--names a,b,...]

Writes OUT_DIR/{val_ppl.png, val_ppl_domains.png, weights.png, summary.md, summary.json}.
"""

import sys, pathlib; sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # noqa: E401,E702

import argparse

from neox.reports import RunMismatchError, compare_runs
from neox.training.metrics import RunReadError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (with metrics.jsonl)")
    parser.add_argument("-o", "--out", required=True, metavar="OUT_DIR", help="output directory")
    parser.add_argument("--names", default=None,
                        help="comma-separated display names, one per run (default: the runs' run_name)")
    args = parser.parse_args(argv)
    names = None if args.names is None else [n.strip() for n in args.names.split(",")]
    try:
        compare_runs(args.run_dirs, args.out, names=names)
    except (RunReadError, RunMismatchError, ValueError) as e:
        print(f"compare_runs: error: {e}", file=sys.stderr)
        return 2
    summary_md = pathlib.Path(args.out) / "summary.md"
    print(summary_md.read_text())
    print(f"wrote {args.out}/val_ppl.png, val_ppl_domains.png, weights.png, summary.md, summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
