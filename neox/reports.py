"""Comparing runs: metrics.jsonl (read by ``neox.training.metrics.read_run``) -> tables and PNG plots.

Public API:
    check_comparable(runs)                       raises RunMismatchError naming the field and the runs
    time_to_target(runs) -> list[dict]
    compare_runs(run_dirs, out_dir, names=None) -> dict    (writes PNGs, summary.md, summary.json)
    plot_run(run_dir, out_png) -> Path
    summarize_run(run_dir) -> str
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from neox.files import atomic_path, atomic_write_text
from neox.training.metrics import RunMetrics, _num, read_run

# Header fields that must agree before two runs' validation perplexities mean the same thing:
# field -> what it identifies (used in the refusal message).
COMPARABILITY_FIELDS: dict[str, str] = {
    "domains": "the domain list",
    "manifest_sha256": "the training/validation data (data manifest)",
    "tokenizer_sha256": "the tokenizer",
    "val_fingerprint": "the validation set (sample ids)",
    "val_samples_per_domain": "the validation set size per domain",
}


class RunMismatchError(ValueError):
    """Runs that cannot be compared: the message names the differing field and the runs on each side."""


def check_comparable(runs: Sequence[RunMetrics]) -> None:
    """Refuse runs whose validation perplexities are not comparable (different domains, data, ...)."""
    for key, what in COMPARABILITY_FIELDS.items():
        groups: dict[str, list[str]] = {}
        for run in runs:
            value = run.header.get(key, "<missing>")
            groups.setdefault(json.dumps(value, sort_keys=True), []).append(run.name)
        if len(groups) > 1:
            sides = "; ".join(f"{', '.join(names)}: {key}={_short(json.loads(v))}" for v, names in groups.items())
            raise RunMismatchError(
                f"runs differ in '{key}' ({what}), so their validation perplexities are not comparable: "
                f"{sides}. Compare runs trained and validated on the same data, tokenizer and validation set.")


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def time_to_target(runs: Sequence[RunMetrics]) -> list[dict[str, Any]]:
    """For each ordered pair (A, B), A != B: when A first reaches B's final mean validation perplexity.

    fraction = (first eval step where A's mean val ppl <= B's final mean val ppl) / (B's final eval step).
    1 - fraction is "how much faster A reaches B's final perplexity" (the paper's "71% faster" for
    AC-ODM-410M vs ODM is fraction 0.29). None when A never reaches it.
    """
    rows = []
    finals = {}
    for run in runs:
        rec = run.final_eval
        finals[run.name] = (int(rec["step"]), run.mean_val_ppl(rec))
    for a in runs:
        a_steps, a_ppl = a.mean_val_ppl_series()
        for b in runs:
            if a is b:
                continue
            b_final_step, target = finals[b.name]
            reached = next((s for s, p in zip(a_steps, a_ppl) if p <= target), None)
            fraction = None if reached is None or b_final_step == 0 else reached / b_final_step
            rows.append({
                "a": a.name, "b": b.name, "target_val_ppl_mean": target, "b_final_step": b_final_step,
                "a_reached_step": reached, "a_last_step": a_steps[-1] if a_steps else None,
                "fraction": fraction, "speedup": None if fraction is None else 1.0 - fraction,
            })
    return rows


def _fraction_text(row: dict[str, Any]) -> str:
    if row["fraction"] is not None:
        return f"{row['fraction']:.3f}"
    # Not reached: if A ran at least as long as B, A needs more than B's steps (">1"); if A stopped
    # earlier, its run says nothing about whether it would have.
    if row["a_last_step"] is not None and row["a_last_step"] >= row["b_final_step"]:
        return ">1"
    return f"never (ran to step {row['a_last_step']})"


def _fmt(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "—" if value is None else str(value)
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.4e}"


def _markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _savefig(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _log_y(ax: Any) -> None:
    """Log-scale y with plain numbers (120, 200, 300) instead of 1.2x10^2: perplexities are read off."""
    from matplotlib.ticker import LogFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def _grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = min(n, max_cols)
    return -(-n // cols), cols


def _weights_panel(ax: Any, run: RunMetrics) -> None:
    domains = run.domains
    keys = [f"weights/{d}" for d in domains]
    recs = [r for r in run.train if all(k in r for k in keys)]
    ax.set_title(f"{run.name}: domain weights")
    ax.set_xlabel("step")
    if not recs or not domains:
        ax.text(0.5, 0.5, "no weight records", ha="center", va="center", transform=ax.transAxes)
        return
    steps = [int(r["step"]) for r in recs]
    ax.stackplot(steps, [[_num(r[k]) for r in recs] for k in keys], labels=domains,
                 colors=_colors(len(domains)))
    ax.set_ylim(0, 1)
    ax.set_xlim(steps[0], steps[-1] if steps[-1] > steps[0] else steps[0] + 1)
    ax.set_ylabel("weight")


def _colors(n: int) -> list[Any]:
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _plot_val_ppl(runs: Sequence[RunMetrics], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run in runs:
        steps, ppl = run.mean_val_ppl_series()
        ax.plot(steps, ppl, marker="o", markersize=3, label=run.name)
    _log_y(ax)
    ax.set_xlabel("step")
    ax.set_ylabel("mean validation perplexity (unweighted over domains)")
    ax.set_title("validation perplexity")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    _savefig(fig, path)


def _plot_val_ppl_domains(runs: Sequence[RunMetrics], path: Path) -> None:
    plt = _pyplot()
    domains = runs[0].domains
    rows, cols = _grid(len(domains))
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
    for i, domain in enumerate(domains):
        ax = axes[i // cols][i % cols]
        for run in runs:
            steps, ppl = run.eval_series(f"val_ppl/{domain}")
            ax.plot(steps, ppl, marker="o", markersize=2, label=run.name)
        _log_y(ax)
        ax.set_title(domain, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        if i % cols == 0:
            ax.set_ylabel("val ppl")
        if i // cols == rows - 1:
            ax.set_xlabel("step")
    for j in range(len(domains), rows * cols):
        axes[j // cols][j % cols].set_visible(False)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=min(len(runs), 4), bbox_to_anchor=(0.5, 1.04))
    fig.suptitle("per-domain validation perplexity", y=1.08)
    fig.tight_layout()
    _savefig(fig, path)


def _plot_weights(runs: Sequence[RunMetrics], path: Path) -> None:
    plt = _pyplot()
    rows, cols = _grid(len(runs), max_cols=2)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.6 * rows), squeeze=False)
    for i, run in enumerate(runs):
        _weights_panel(axes[i // cols][i % cols], run)
    for j in range(len(runs), rows * cols):
        axes[j // cols][j % cols].set_visible(False)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles[::-1], labels[::-1], loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    _savefig(fig, path)


def _final_table(runs: Sequence[RunMetrics]) -> tuple[str, dict[str, Any]]:
    domains = runs[0].domains
    header = ["run", "final step", "tokens", "mean ppl", "weighted ppl"] + domains
    rows, data = [], {}
    for run in runs:
        rec = run.final_eval
        per_domain = {d: _num(rec[f"val_ppl/{d}"]) for d in domains if f"val_ppl/{d}" in rec}
        weighted = rec.get("val_ppl/weighted")
        entry = {
            "run_dir": str(run.run_dir), "final_step": int(rec["step"]), "tokens": rec.get("tokens"),
            "final_val_ppl_mean": run.mean_val_ppl(rec),
            "final_val_ppl_weighted": None if weighted is None else _num(weighted),
            "final_val_ppl": per_domain, "method": run.header.get("method"), "seed": run.header.get("seed"),
        }
        data[run.name] = entry
        rows.append([run.name, str(entry["final_step"]), str(entry["tokens"] if entry["tokens"] is not None else "—"),
                     _fmt(entry["final_val_ppl_mean"]), _fmt(entry["final_val_ppl_weighted"])]
                    + [_fmt(per_domain.get(d)) for d in domains])
    return _markdown_table(header, rows), data


def _lm_eval_table(runs: Sequence[RunMetrics]) -> tuple[str, dict[str, Any]]:
    """The last lm_eval record of each run (if any run has one)."""
    finals = {run.name: run.lm_evals[-1] for run in runs if run.lm_evals}
    if not finals:
        return "", {}
    keys = sorted({k for rec in finals.values() for k in rec if k not in ("kind", "step", "tokens")})
    rows = []
    for run in runs:
        rec = finals.get(run.name, {})
        rows.append([run.name, str(rec.get("step", "—"))]
                    + [_fmt(float(rec[k])) if isinstance(rec.get(k), (int, float)) else "—" for k in keys])
    data = {name: {k: rec[k] for k in keys if k in rec} | {"step": rec["step"]} for name, rec in finals.items()}
    return _markdown_table(["run", "step"] + keys, rows), data


def compare_runs(run_dirs: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str],
                 names: Sequence[str] | None = None) -> dict[str, Any]:
    """Compare runs: writes val_ppl.png, val_ppl_domains.png, weights.png, summary.md, summary.json.

    Returns the summary (the content of summary.json).
    """
    if not run_dirs:
        raise ValueError("compare_runs needs at least one run directory")
    if names is not None and len(names) != len(run_dirs):
        raise ValueError(f"--names gives {len(names)} names for {len(run_dirs)} runs; give one name per run")
    runs = [read_run(d, None if names is None else names[i]) for i, d in enumerate(run_dirs)]
    _unique_names(runs)
    for run in runs:
        run.final_eval  # raises a clear error for a run without eval records
    check_comparable(runs)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _plot_val_ppl(runs, out / "val_ppl.png")
    _plot_val_ppl_domains(runs, out / "val_ppl_domains.png")
    _plot_weights(runs, out / "weights.png")

    final_md, final_data = _final_table(runs)
    ttt = time_to_target(runs)
    lm_md, lm_data = _lm_eval_table(runs)
    summary = {"runs": final_data, "time_to_target": ttt, "lm_eval": lm_data,
               "domains": runs[0].domains}
    atomic_write_text(out / "summary.json", json.dumps(_json_safe(summary), indent=2) + "\n")
    atomic_write_text(out / "summary.md", _summary_markdown(runs, final_md, ttt, lm_md))
    return summary


def _json_safe(value: Any) -> Any:
    """NaN/inf -> null, so summary.json stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _unique_names(runs: Sequence[RunMetrics]) -> None:
    """Runs of one config share its run_name (e.g. demo_cpu with two methods): name those by directory."""
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.name] = counts.get(run.name, 0) + 1
    for run in runs:
        if counts[run.name] > 1 and run.name == run.header.get("run_name"):
            run.name = run.run_dir.resolve().name
    seen: dict[str, int] = {}
    for run in runs:
        if run.name in seen:
            seen[run.name] += 1
            run.name = f"{run.name}#{seen[run.name]}"
        else:
            seen[run.name] = 1


def _summary_markdown(runs: Sequence[RunMetrics], final_md: str, ttt: list[dict[str, Any]], lm_md: str) -> str:
    names = [r.name for r in runs]
    cell = {(row["a"], row["b"]): _fraction_text(row) for row in ttt}
    ttt_md = _markdown_table(
        ["A \\ B (target: B's final ppl)"] + names,
        [[a] + ["—" if a == b else cell[(a, b)] for b in names] for a in names])
    parts = [
        "# Run comparison",
        "",
        "Runs: " + ", ".join(f"`{r.name}` ({r.run_dir})" for r in runs),
        "",
        "## Final validation perplexity",
        "",
        "Mean = unweighted mean of the per-domain perplexities; weighted = the trainer's val_ppl/weighted.",
        "",
        final_md,
        "",
        "## Time to target",
        "",
        "Cell (A, B): the first eval step at which A's mean validation perplexity is <= B's final mean",
        "validation perplexity, as a fraction of B's final step. `1 - fraction` is how much faster A",
        "reaches B's final perplexity: the paper's \"71% faster\" (AC-ODM-410M vs ODM) is a fraction",
        "of 0.29 in the row of AC-ODM-410M, column of ODM. `>1`: A ran at least as long as B and never",
        "reached it; `never`: A stopped before B's final step without reaching it. The resolution is the",
        "eval interval.",
        "",
        ttt_md,
        "",
    ]
    if lm_md:
        parts += ["## lm-eval (last record of each run)", "", lm_md, ""]
    return "\n".join(parts)


def plot_run(run_dir: str | os.PathLike[str], out_png: str | os.PathLike[str]) -> Path:
    """One run's domain weights (stacked area) and per-domain validation perplexity in one PNG."""
    run = read_run(run_dir)
    plt = _pyplot()
    fig, (ax_w, ax_p) = plt.subplots(1, 2, figsize=(13, 4.5))
    _weights_panel(ax_w, run)
    colors = _colors(len(run.domains))
    for color, domain in zip(colors, run.domains):
        steps, ppl = run.eval_series(f"val_ppl/{domain}")
        ax_p.plot(steps, ppl, marker="o", markersize=3, color=color, label=domain)
    steps, ppl = run.mean_val_ppl_series()
    if steps:
        ax_p.plot(steps, ppl, color="black", linestyle="--", linewidth=2, label="mean")
        _log_y(ax_p)
    else:
        ax_p.text(0.5, 0.5, "no eval records", ha="center", va="center", transform=ax_p.transAxes)
    ax_p.set_title(f"{run.name}: validation perplexity")
    ax_p.set_xlabel("step")
    ax_p.set_ylabel("val ppl")
    ax_p.grid(True, which="both", alpha=0.3)
    ax_p.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    out = Path(out_png)
    _savefig(fig, out)
    return out


def summarize_run(run_dir: str | os.PathLike[str]) -> str:
    """A markdown table of per-domain validation perplexity at the first and the last eval."""
    run = read_run(run_dir)
    last = run.final_eval
    first = run.evals[0]
    header = ["domain", f"step {first['step']}", f"step {last['step']}", "change"]
    rows = []

    def row(label: str, a: float | None, b: float | None) -> list[str]:
        change = "—" if a is None or b is None or a == 0 else f"{100.0 * (b - a) / a:+.1f}%"
        return [label, _fmt(a), _fmt(b), change]

    for d in run.domains:
        key = f"val_ppl/{d}"
        rows.append(row(d, first.get(key), last.get(key)))
    rows.append(row("mean", run.mean_val_ppl(first), run.mean_val_ppl(last)))
    if "val_ppl/weighted" in first and "val_ppl/weighted" in last:
        rows.append(row("weighted", _num(first["val_ppl/weighted"]), _num(last["val_ppl/weighted"])))
    return f"{run.name}: validation perplexity\n\n" + _markdown_table(header, rows)
