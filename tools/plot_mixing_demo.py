#!/usr/bin/env python
"""The picture and the verdict of `make demo`: AC-ODM against uniform sampling on the *noisy* variant.

    python tools/plot_mixing_demo.py runs/demo --variant data/mixing_bench/noisy [-o runs/demo/demo.png]

Reads the two runs benchmarks/mixing_quality.py left in RUNS (noisy/uniform/seedS, noisy/acodm/seedS), plots
the mean validation perplexity of the variant's target domains for both, and AC-ODM's weights (the clean
domains one by one, the junk domains summed), then prints one line with the measured difference.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.mixing_quality import target_curve  # noqa: E402
from neox.training.metrics import read_run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", help="the --runs-dir of benchmarks/mixing_quality.py")
    ap.add_argument("--variant", default="data/mixing_bench/noisy", help="the variant's directory")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("-o", "--out", default=None, help="PNG (default RUNS/demo.png)")
    args = ap.parse_args(argv)
    info_path = Path(args.variant) / "variant.json"
    runs = {m: Path(args.runs) / "noisy" / m / f"seed{args.seed}" for m in ("uniform", "acodm")}
    missing = [str(p) for p in [info_path, *(r / "metrics.jsonl" for r in runs.values())] if not p.exists()]
    if missing:
        print(f"plot_mixing_demo: error: missing {', '.join(missing)}; run `make demo`", file=sys.stderr)
        return 2
    info = json.loads(info_path.read_text())
    targets = info["target_domains"]
    records = {m: read_run(r) for m, r in runs.items()}
    curves = {m: target_curve(rec.evals, targets) for m, rec in records.items()}

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_ppl, ax_w) = plt.subplots(1, 2, figsize=(11, 4))
    for m, color in (("uniform", "tab:gray"), ("acodm", "tab:red")):
        steps = [s for s, _, _ in curves[m]][1:]  # step 0 is the same model for both
        ax_ppl.plot(steps, [p for _, _, p in curves[m]][1:], marker="o", color=color, label=m)
    ax_ppl.set(xlabel="step", ylabel="mean val ppl of the clean (target) domains", yscale="log",
               title="noisy variant: 8 clean + 8 junk domains")
    ax_ppl.legend()
    train = records["acodm"].train
    steps = [r["step"] for r in train]
    domains = [k.split("/", 1)[1] for k in train[0] if k.startswith("weights/")]
    junk = [d for d in domains if d not in targets]
    for d in targets:
        ax_w.plot(steps, [r[f"weights/{d}"] for r in train], lw=1, label=d)
    ax_w.plot(steps, [sum(r[f"weights/{d}"] for d in junk) for r in train], color="k", lw=2.5,
              label=f"{len(junk)} junk domains (sum)")
    ax_w.set(xlabel="step", ylabel="AC-ODM weight", title="AC-ODM's mixture")
    ax_w.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    out = args.out or str(Path(args.runs) / "demo.png")
    fig.savefig(out, dpi=110)

    (step, _, uni), (_, _, ac) = curves["uniform"][-1], curves["acodm"][-1]
    junk_share = sum(train[-1][f"weights/{d}"] for d in junk)
    print(f"wrote {out}")
    print(f"verdict: after {step} steps AC-ODM's clean-domain val ppl is {ac:.1f} vs uniform's {uni:.1f} "
          f"({ac / uni - 1:+.1%}); it gives the {len(junk)} junk domains {junk_share:.0%} of the batch "
          f"(uniform: {len(junk) / len(domains):.0%}). One seed: the 3-seed study is in the README.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
