"""Freeze the policy of an AC-ODM run: RUN_DIR or CHECKPOINT_DIR -> OUT_DIR/actor.{safetensors,json}.

    python tools/export_actor.py runs/pythia_410m_acodm -o actor_410m/
    python tools/export_actor.py runs/pythia_410m_acodm/checkpoints/step_00041667 -o actor_410m/

A target run then uses it with ``mixing: {method: acodm_frozen, actor: actor_410m/}``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from acodm.actor_export import export_actor, read_actor_metadata  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="run directory (uses checkpoints/latest) or a checkpoint directory")
    parser.add_argument("-o", "--out", required=True, help="output directory for the exported actor")
    args = parser.parse_args(argv)
    try:
        out = export_actor(args.source, args.out)
    except (FileNotFoundError, ValueError) as exc:
        print(f"export_actor: error: {exc}", file=sys.stderr)
        return 2
    meta = read_actor_metadata(out)
    print(f"exported actor of step {meta['training_step']} ({len(meta['domains'])} domains, "
          f"state dim {meta['state_spec']['dim']}) to {out}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
