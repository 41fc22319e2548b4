#!/usr/bin/env python
"""Mixing quality: does a mixer lower the target loss, measured with enough seeds to tell?

    python tools/make_mixing_benchmark.py                 # the corpus variants (data/mixing_bench)
    python benchmarks/mixing_quality.py                   # the whole study (make study)
    python benchmarks/mixing_quality.py --quick           # smoke test: 1 seed, few steps

For every variant x method x seed one run of ``configs/mixing_bench.yml`` (the demo model) on the variant's
tokens; the score is the final mean validation loss / perplexity over the variant's target domains
(``variant.json``). Each method is compared with uniform sampling *paired by seed* (same initialisation,
same data order): the per-seed relative difference of the target perplexity, its mean and a 95% t-interval
over seeds. Writes ``OUT/mixing_quality.jsonl`` (one record per run, so anyone can recompute the table),
``OUT/mixing_quality.md`` and ``OUT/mixing_quality.png``. Finished runs are reused (``--fresh`` reruns),
so an interrupted study resumes where it stopped. The last line is
``result: noisy_gap_closed=F heldout_vs_uniform=F clean_vs_uniform=F imbalanced_vs_uniform=F`` for AC-ODM
(relative differences vs uniform; gap closed = (uniform − acodm) / (uniform − oracle) on *noisy*).

Methods are names of ``mixing.method`` plus ``uniform``, ``natural`` (token proportions) and ``oracle``
(the variant's oracle static mixture, *noisy* only); ``acodm:LABEL`` runs an AC-ODM candidate from
``CANDIDATES`` (recorded as method ``acodm`` with that label). Mixers are told the variant's target
(``mixing.target_domains``: the clean domains in *noisy*, the held-out domain in *heldout*; every domain
elsewhere), as a user states what the model is for; the methods that read gradients use it (DoGE's
target branch, AC-ODM's target direction), ODM and DoReMi have no input for it. Without it no mixer could
tell a repeated passage (whose validation text is the same passage, so its loss really falls) from data
that matters.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VARIANTS = ("clean", "noisy", "imbalanced", "heldout")
PEERS = ("uniform", "natural", "oracle", "odm", "doge", "doremi")
# AC-ODM designs compared on the benchmark (README "Mixing quality" records every one, losers included).
CANDIDATES: dict[str, list[str]] = {
    # the default (linear reward, known-gradient actor, realised shares); its final checkpoint holds the
    # trained actor (the proxy of the transfer study)
    "default": ["mixing.method=acodm", "checkpoint.save_final=true"],
    # the concave surrogate on the cross-step Gram
    "surrogate": ["mixing.method=acodm", "mixing.acodm.reward=surrogate"],
    # the design shipped before this study: linear reward, learned critic, nominal actions, paper's lr
    "linear_ddpg": ["mixing.method=acodm", "mixing.acodm.actor_gradient=critic", "mixing.acodm.action=nominal"],
    "paper": ["mixing.method=acodm", "mixing.acodm.reward=paper"],  # the paper's reproduction mode
}
DEFAULT_METHODS = ("uniform", "natural", "oracle", "odm", "doge", "doremi", "acodm")


TRANSFER = ("uniform@target", "acodm@target", "acodm_frozen@target")


def method_overrides(method: str, variant_dir: Path, run_of) -> list[str] | None:
    """Config overrides of one method on one variant; None if the method is not defined there.

    ``M@target`` runs M on the larger target model (``--target-config``); ``acodm_frozen@target`` is driven by
    the actor of the same seed's proxy run (``acodm``), exported with tools/export_actor.py.
    """
    if method == "acodm_frozen@target":
        proxy = run_of("acodm")
        actor = proxy / "actor"
        if not (actor / "actor.json").exists():
            subprocess.run([sys.executable, str(ROOT / "tools/export_actor.py"), str(proxy), "-o", str(actor)],
                           check=True, capture_output=True)
        return ["mixing.method=acodm_frozen", f"mixing.acodm_frozen.actor={actor}"]
    if method.endswith("@target"):
        return method_overrides(method[: -len("@target")], variant_dir, run_of)
    if method == "uniform":  # its final checkpoint is DoReMi's reference model
        return ["mixing.method=static", "mixing.static={kind: uniform}", "checkpoint.save_final=true"]
    if method == "natural":
        return ["mixing.method=static", "mixing.static={kind: temperature, alpha: 1.0}"]
    if method == "oracle":
        path = variant_dir / "oracle_weights.json"
        return ["mixing.method=static", f"mixing.static={{kind: file, path: {path}}}"] if path.exists() else None
    if method in ("odm", "doge"):
        return [f"mixing.method={method}"]
    if method == "doremi":  # the reference model: uniform sampling, same seed, same data (DoReMi's recipe)
        return ["mixing.method=doremi", f"mixing.doremi.reference={run_of('uniform')}"]
    if method == "acodm":
        return CANDIDATES["default"]
    if method.startswith("acodm:"):
        label = method.split(":", 1)[1]
        if label not in CANDIDATES:
            raise SystemExit(f"error: unknown AC-ODM candidate {label!r}; known: {', '.join(CANDIDATES)}")
        return CANDIDATES[label]
    raise SystemExit(f"error: unknown method {method!r}; use {', '.join(DEFAULT_METHODS)} or acodm:LABEL")


def eval_records(run_dir: Path) -> list[dict]:
    """The run's evaluation records, one per step (the trainer's reader); none for a run not started."""
    from neox.training.metrics import METRICS_FILE, read_run

    return read_run(run_dir).evals if (run_dir / METRICS_FILE).exists() else []


def target_curve(evals: list[dict], targets: list[str]) -> list[tuple[int, float, float]]:
    """(step, mean target val loss, mean target val ppl) of every evaluation."""
    out = []
    for r in evals:
        losses = np.array([r[f"val_loss/{d}"] for d in targets])
        out.append((int(r["step"]), float(losses.mean()), float(np.exp(losses).mean())))
    return out


def t_interval(x: np.ndarray) -> tuple[float, float, float]:
    """Mean and 95% t-interval half-width over seeds (nan width with one seed)."""
    from scipy import stats

    x = np.asarray(x, dtype=np.float64)
    if x.size < 2:
        return float(x.mean()), float("nan"), float("nan")
    half = float(stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return float(x.mean()), float(x.mean() - half), float(x.mean() + half)


class Study:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.bench = Path(args.bench_dir)
        self.runs = Path(args.runs_dir)
        self.threads = max(1, (os.cpu_count() or 2) // args.jobs)

    def run_dir(self, variant: str, method: str, seed: int) -> Path:
        return self.runs / variant / method.replace(":", "_") / f"seed{seed}"

    def finished(self, run_dir: Path, config: str | None = None, overrides: list[str] | None = None) -> bool:
        """The run reached the last evaluation (and, given the command's config, was run with it)."""
        evals = eval_records(run_dir)
        if not (evals and evals[-1]["step"] == self.args.steps):
            return False
        if config is None:
            return True
        from neox.config import MIXING_METHODS, load_config

        def essentials(cfg) -> dict:
            d = cfg.to_dict()
            for key in ("name", "logging"):
                d.pop(key)
            d["data"].pop("tokenizer")  # a path; the run checked its sha256 against the tokens' manifest
            for method in MIXING_METHODS:  # the other methods' parameters do not change this run
                if method != cfg.mixing.method:
                    d["mixing"].pop(method, None)
            return d

        return essentials(load_config(run_dir / "config.yml")) == essentials(load_config(ROOT / config, overrides))

    def train(self, variant: str, method: str, seed: int) -> Path | None:
        if self.args.report_only:
            return None
        vdir = self.bench / variant
        info = json.loads((vdir / "variant.json").read_text())
        run_dir = self.run_dir(variant, method, seed)
        overrides = method_overrides(method, vdir, lambda m: self.run_dir(variant, m, seed))
        if overrides is None:
            return None
        config = self.args.target_config if method.endswith("@target") else self.args.config
        overrides = [f"seed={seed}", f"data.path={vdir / 'tokens'}", f"data.tokenizer={vdir / 'tokenizer.json'}",
                     f"logging.run_dir={run_dir}",
                     f"name={variant}_{method}_{seed}", f"schedule.train_steps={self.args.steps}",
                     f"eval.interval_steps={self.args.eval_interval}", *overrides]
        if sorted(info["target_domains"]) != sorted(info["train_domains"]):  # the mixers are told the target
            overrides.append(f"mixing.target_domains=[{', '.join(info['target_domains'])}]")
        if self.finished(run_dir, config, overrides) and not self.args.fresh:
            return run_dir  # reused: finished with this very configuration
        if run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)
        cmd = [sys.executable, str(ROOT / "train.py"), str(ROOT / config), *overrides]
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "PYTHONWARNINGS": "ignore"}
        started = time.perf_counter()
        log = run_dir.parent / f"seed{seed}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as fh:
            rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
        if rc != 0:
            raise RuntimeError(f"{variant}/{method}/seed {seed} failed (exit {rc}); see {log}")
        print(f"  {variant:10s} {method:18s} seed {seed}: {time.perf_counter() - started:5.0f} s", file=sys.stderr,
              flush=True)
        return run_dir

    def records(self) -> list[dict]:
        """Train what is missing (uniform first: DoReMi's reference), then one record per run."""
        a = self.args
        grid = [(v, m, s) for v in a.variants for m in a.methods for s in a.seeds
                if v == "noisy" or not m.endswith("@target")]  # the transfer study runs on noisy
        # uniform first (DoReMi's reference), the frozen actor after its proxy, the target's own AC-ODM last
        later = ("uniform", "acodm_frozen@target", "acodm@target")
        stages = [[g for g in grid if g[1] == "uniform"], [g for g in grid if g[1] not in later],
                  [g for g in grid if g[1] == "acodm_frozen@target"], [g for g in grid if g[1] == "acodm@target"]]
        with ThreadPoolExecutor(a.jobs) as pool:
            for stage in stages:
                list(pool.map(lambda g: self.train(*g), stage))
        out = []
        for v, m, s in grid:
            run_dir = self.run_dir(v, m, s)
            if not self.finished(run_dir):
                continue  # not defined for this variant (oracle)
            info = json.loads((self.bench / v / "variant.json").read_text())
            curve = target_curve(eval_records(run_dir), info["target_domains"])
            method, label = (m.split(":", 1) + ["default"])[:2] if ":" in m else (m, "default" if m == "acodm" else "")
            out.append({"variant": v, "method": method, "label": label, "seed": s, "steps": a.steps,
                        "target_loss": curve[-1][1], "target_ppl": curve[-1][2],
                        "curve": [[st, lo, pp] for st, lo, pp in curve]})
        return out


def key(r: dict) -> str:
    return r["method"] + (f":{r['label']}" if r["label"] and r["label"] != "default" else "")


def summarise(records: list[dict]) -> tuple[list[dict], dict[str, float]]:
    """Per variant and method: mean target ppl/loss, paired relative difference vs uniform with a 95% CI,
    steps to reach uniform's final target ppl; and the result line's values."""
    rows = []
    result: dict[str, float] = {}
    for v in VARIANTS:
        by = {}
        for r in records:
            if r["variant"] == v:
                by.setdefault(key(r), {})[r["seed"]] = r
        if "uniform" not in by:
            continue
        for name, runs in by.items():
            uni = by.get("uniform@target" if name.endswith("@target") else "uniform", {})
            seeds = sorted(set(runs) & set(uni))
            rel = np.array([runs[s]["target_ppl"] / uni[s]["target_ppl"] - 1 for s in seeds])
            mean, lo, hi = t_interval(rel) if seeds else (float("nan"),) * 3
            reach = []
            for s in seeds:
                goal = uni[s]["target_ppl"]
                hit = [st for st, _, pp in runs[s]["curve"] if pp <= goal]
                reach.append(hit[0] if hit else None)
            rows.append({"variant": v, "method": name, "seeds": len(seeds),
                         "target_ppl": float(np.mean([runs[s]["target_ppl"] for s in seeds])),
                         "target_loss": float(np.mean([runs[s]["target_loss"] for s in seeds])),
                         "rel_vs_uniform": mean, "ci_lo": lo, "ci_hi": hi, "steps_to_uniform": reach})
        uni = by["uniform"]
        if "acodm" in by:
            seeds = sorted(set(by["acodm"]) & set(uni))
            result[f"{v}_vs_uniform"] = float(np.mean([by["acodm"][s]["target_ppl"] / uni[s]["target_ppl"] - 1
                                                       for s in seeds]))
            if v == "noisy" and "oracle" in by:
                seeds = sorted(set(seeds) & set(by["oracle"]))
                gaps = [(uni[s]["target_ppl"] - by["acodm"][s]["target_ppl"])
                        / (uni[s]["target_ppl"] - by["oracle"][s]["target_ppl"]) for s in seeds]
                result["noisy_gap_closed"] = float(np.mean(gaps))
        if {"uniform@target", "acodm@target", "acodm_frozen@target"} <= set(by):
            # the share of the target's own online gain that the proxy's frozen actor keeps
            ut, on, fr = by["uniform@target"], by["acodm@target"], by["acodm_frozen@target"]
            seeds = sorted(set(ut) & set(on) & set(fr))
            result["transfer_kept"] = float(np.mean(
                [(ut[s]["target_ppl"] - fr[s]["target_ppl"]) / (ut[s]["target_ppl"] - on[s]["target_ppl"])
                 for s in seeds]))
    return rows, result


def write_report(rows: list[dict], records: list[dict], out: Path, args: argparse.Namespace) -> None:
    lines = [f"# Mixing quality ({args.steps} steps, seeds {', '.join(map(str, args.seeds))})", "",
             f"`python benchmarks/mixing_quality.py {' '.join(sys.argv[1:])}`; one record per run in "
             f"`mixing_quality.jsonl`. rel = target ppl / uniform's − 1, paired by seed, mean and 95% t-interval.",
             "", "| variant | method | seeds | target ppl | target loss | rel vs uniform | 95% CI | steps to uniform's final |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = "—" if math.isnan(r["ci_lo"]) else f"[{r['ci_lo']:+.2%}, {r['ci_hi']:+.2%}]"
        reach = ", ".join("—" if x is None else str(x) for x in r["steps_to_uniform"])
        lines.append(f"| {r['variant']} | {r['method']} | {r['seeds']} | {r['target_ppl']:.1f} | {r['target_loss']:.4f} "
                     f"| {r['rel_vs_uniform']:+.2%} | {ci} | {reach} |")
    (out / "mixing_quality.md").write_text("\n".join(lines) + "\n")
    with open(out / "mixing_quality.jsonl", "w") as fh:
        for r in records:
            fh.write(json.dumps({k: r[k] for k in ("variant", "method", "label", "seed", "steps", "target_loss",
                                                   "target_ppl")}) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = [v for v in VARIANTS if any(r["variant"] == v for r in rows)]
    fig, axes = plt.subplots(1, len(variants), figsize=(4.2 * len(variants), 3.6), squeeze=False)
    for ax, v in zip(axes[0], variants):
        vr = [r for r in rows if r["variant"] == v and r["method"] not in ("uniform", "uniform@target")]
        y = np.arange(len(vr))
        mean = np.array([r["rel_vs_uniform"] for r in vr]) * 100
        err = np.array([[r["rel_vs_uniform"] - r["ci_lo"], r["ci_hi"] - r["rel_vs_uniform"]] for r in vr]).T * 100
        ax.barh(y, mean, xerr=np.nan_to_num(err), color=["tab:red" if r["method"].startswith("acodm") else "tab:gray"
                                                         for r in vr])
        ax.set_yticks(y, [r["method"] for r in vr], fontsize=8)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_title(f"{v}: target ppl vs uniform (%)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "mixing_quality.png", dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench-dir", default="data/mixing_bench")
    ap.add_argument("--runs-dir", default="runs/mixing_quality")
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--config", default="configs/mixing_bench.yml")
    ap.add_argument("--target-config", default="configs/mixing_bench_target.yml",
                    help="the larger model of the transfer study (methods uniform@target, acodm@target, "
                         "acodm_frozen@target; --transfer adds them on noisy)")
    ap.add_argument("--transfer", action="store_true", help="add the proxy -> target transfer study on noisy")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    ap.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (>= 3 for an interval)")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--eval-interval", type=int, default=25)
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel (threads split between them)")
    ap.add_argument("--fresh", action="store_true", help="rerun finished runs")
    ap.add_argument("--report-only", action="store_true", help="no training: report the finished runs of the grid")
    ap.add_argument("--quick", action="store_true", help="smoke test: seed 1, 20 steps, noisy only")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.eval_interval = "1", 20, 10
        args.variants = "noisy" if args.variants == ",".join(VARIANTS) else args.variants
        args.runs_dir = args.runs_dir.rstrip("/") + "_quick"
    args.variants = [v for v in args.variants.split(",") if v]
    args.methods = [m for m in args.methods.split(",") if m]
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad:
        print(f"error: --variants: unknown {bad}; choose from {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    missing = [v for v in args.variants if not (Path(args.bench_dir) / v / "variant.json").exists()]
    if missing:
        print(f"error: {args.bench_dir} lacks the variant(s) {missing}; build them with "
              f"`python tools/make_mixing_benchmark.py --out {args.bench_dir}`", file=sys.stderr)
        return 2
    if "uniform" not in args.methods:
        args.methods.insert(0, "uniform")  # every comparison is paired with uniform
    if args.transfer:
        args.methods += [m for m in ("acodm", *TRANSFER) if m not in args.methods]
    started = time.perf_counter()
    records = Study(args).records()
    rows, result = summarise(records)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_report(rows, records, out, args)
    print((out / "mixing_quality.md").read_text())
    print(f"study: {len(records)} runs in {time.perf_counter() - started:.0f} s -> {out}", file=sys.stderr)
    keys = ("noisy_gap_closed", "heldout_vs_uniform", "clean_vs_uniform", "imbalanced_vs_uniform", "transfer_kept")
    print("result: " + " ".join(f"{k}={result[k]:.4f}" if k in result else f"{k}=nan" for k in keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
