"""Plot one run: domain weights and per-domain validation perplexity over steps in one PNG, and print
a table of per-domain validation perplexity at the first and the last eval.

    python tools/plot_run.py RUN_DIR [-o OUT.png]      (default: RUN_DIR/run.png)
"""

import sys, pathlib; sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # noqa: E401,E702

import argparse

from neox.reports import plot_run, summarize_run
from neox.training.metrics import RunReadError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run directory (with metrics.jsonl)")
    parser.add_argument("-o", "--out", default=None, metavar="OUT.png", help="output PNG (default RUN_DIR/run.png)")
    args = parser.parse_args(argv)
    out = args.out or str(pathlib.Path(args.run_dir) / "run.png")
    try:
        plot_run(args.run_dir, out)
        table = summarize_run(args.run_dir)
    except RunReadError as e:
        print(f"plot_run: error: {e}", file=sys.stderr)
        return 2
    print(table)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
