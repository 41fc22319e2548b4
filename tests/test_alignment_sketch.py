"""Statistics of the sketched Gram matrix: unbiasedness over seeds, and how well the sketched scores W
track the exact ones at the default size. Run as a script to print the accuracy/memory/time table that
acodm/alignment.py quotes:

    python tests/test_alignment_sketch.py            # ~1-2 minutes on 2 CPU cores
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # helpers, when run as a script
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from acodm.alignment import AlignmentConfig, GradientAlignment, alignment_scores  # noqa: E402
from test_alignment_common import TinyNeoX, make_micro_batches, run_step  # noqa: E402

K = 4
VOCAB = 64


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def test_sketched_gram_is_unbiased():
    """Mean over 400 seeds of the sketched Gram -> exact Gram, within 4.5 standard errors per entry."""
    model = TinyNeoX(vocab=VOCAB, hidden=16, num_layers=3)
    pattern = r"layers\.(-1|-3)\.mlp\.dense_4h_to_h$"
    exact = GradientAlignment(model, K, AlignmentConfig(mode="exact", probe_pattern=pattern))
    # Small sketches (4 x 4) make each estimate noisy, so the test has power; one backward feeds them all.
    sketches = [GradientAlignment(model, K, AlignmentConfig(probe_pattern=pattern, sketch_out=4, sketch_in=4, seed=s))
                for s in range(400)]
    mbs = make_micro_batches(5, num_micro=2, batch=4, seq_len=8, vocab=VOCAB, domains=range(K), num_domains=K)
    count_K = run_step(model, [exact, *sketches], mbs, K)
    truth = exact.gram(exact.packed(), count_K)
    samples = np.stack([ga.gram(ga.packed(), count_K) for ga in sketches])  # (S, K, K)
    mean, std = samples.mean(0), samples.std(0, ddof=1)
    stderr = std / np.sqrt(len(samples))
    z = np.abs(mean - truth) / stderr
    assert z.max() <= 4.5, (z, mean, truth)
    # Power: one sketch is far off (so passing is not trivial), and a 20% scale bias (or any of the usual
    # bugs: R ~ N(0, 1) instead of N(0, 1/m), a lost grad_scale, R_in reused as R_out) would be caught.
    assert np.abs(samples[0] - truth).max() > 10 * stderr.max()
    assert (np.abs(1.2 * mean - truth) / stderr).max() > 4.5


def _hf_model(hidden: int, num_layers: int, seed: int = 0):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPTNeoXConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=num_layers,
                                     num_attention_heads=4, intermediate_size=4 * hidden, max_position_embeddings=256,
                                     rotary_pct=0.25, attention_dropout=0.0, hidden_dropout=0.0)
    torch.manual_seed(seed)
    model = transformers.GPTNeoXForCausalLM(cfg).float()
    model.train()
    return model


def measure_scores(sizes, seeds, num_batches, hidden=64, num_layers=6, batch=4, seq_len=32):
    """For each sketch size: W_sketch vs W_exact over ``num_batches`` steps (2 micro-batches each, all K
    domains), one fixed R per seed across steps as in training. Returns {m: (corr W, corr W-without-self,
    rel. Frobenius error of the Gram)} with each number the mean over seeds."""
    model = _hf_model(hidden, num_layers)
    logits = lambda ids: model(input_ids=ids).logits  # noqa: E731
    exact = GradientAlignment(model, K, AlignmentConfig(mode="exact"))
    sketches = {(m, s): GradientAlignment(model, K, AlignmentConfig(sketch_out=m, sketch_in=m, seed=s))
                for m in sizes for s in seeds}
    w_exact, w_exact_ns, gram_exact = [], [], []
    w_sk = {key: ([], [], []) for key in sketches}
    for b in range(num_batches):
        mbs = make_micro_batches(100 + b, num_micro=2, batch=batch, seq_len=seq_len, vocab=VOCAB,
                                 domains=range(K), num_domains=K)
        count_K = run_step(logits, [exact, *sketches.values()], mbs, K)
        model.zero_grad(set_to_none=True)
        g = exact.gram(exact.packed(), count_K)
        w_exact.append(alignment_scores(g))
        w_exact_ns.append(alignment_scores(g, exclude_self=True, normalize=True))
        gram_exact.append(g)
        for key, ga in sketches.items():
            gs = ga.gram(ga.packed(), count_K)
            w_sk[key][0].append(alignment_scores(gs))
            w_sk[key][1].append(alignment_scores(gs, exclude_self=True, normalize=True))
            w_sk[key][2].append(np.linalg.norm(gs - g) / np.linalg.norm(g))
    for ga in (exact, *sketches.values()):
        ga.remove()
    out = {}
    for m in sizes:
        corr = np.mean([_pearson(w_sk[(m, s)][0], w_exact) for s in seeds])
        corr_ns = np.mean([_pearson(w_sk[(m, s)][1], w_exact_ns) for s in seeds])
        err = np.mean([np.mean(w_sk[(m, s)][2]) for s in seeds])
        out[m] = (float(corr), float(corr_ns), float(err))
    return out


def test_default_sketch_scores_correlate_with_exact():
    """64 x 64 sketch (the default, seed 1234) on a 6-layer hidden-64 GPT-NeoX over 6 steps: corr(W) >= 0.9."""
    corr, corr_ns, err = measure_scores([64], [AlignmentConfig().seed], num_batches=6)[64]
    print(f"default 64x64 sketch: corr(W)={corr:.4f} corr(W no-self, normalised)={corr_ns:.4f} gram rel err={err:.4f}")
    assert corr >= 0.9


def measure_time(sizes, hidden=256, num_layers=6, batch=8, seq_len=128, reps=6):
    """Seconds per micro-batch (forward + backward) with no hooks, exact hooks, and each sketch size."""
    model = _hf_model(hidden, num_layers)
    logits = lambda ids: model(input_ids=ids).logits  # noqa: E731
    mbs = make_micro_batches(7, num_micro=1, batch=batch, seq_len=seq_len, vocab=VOCAB, domains=range(K), num_domains=K)

    def timed(aligners):
        run_step(logits, aligners, mbs, K)  # warm-up
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            run_step(logits, aligners, mbs, K)
            best = min(best, time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
        for ga in aligners:
            ga.remove()
        return best

    out = {"none": timed([])}
    out["exact"] = timed([GradientAlignment(model, K, AlignmentConfig(mode="exact"))])
    for m in sizes:
        out[m] = timed([GradientAlignment(model, K, AlignmentConfig(sketch_out=m, sketch_in=m))])
    return out


def _bytes_per_probe(out_dim: int, in_dim: int, m: int | None, num_domains: int) -> int:
    if m is None:
        return 4 * num_domains * out_dim * in_dim
    return 4 * (num_domains * m * m + (out_dim + in_dim) * m)


if __name__ == "__main__":
    sizes = [16, 32, 64, 128]
    tm = measure_time(sizes)
    print("time: GPT-NeoX 6 layers, hidden 256, 3 probes, micro-batch 8 x 128 tokens, best of 6, 2 CPU cores:")
    print(f"  no hooks {tm['none']:.4f} s; exact {tm['exact']:.4f} s ({tm['exact'] / tm['none']:.2f}x); "
          + "; ".join(f"m={m} {tm[m]:.4f} s ({tm[m] / tm['none']:.2f}x)" for m in sizes))
    for hidden in (64, 128):
        acc = measure_scores(sizes, seeds=list(range(5)), num_batches=8, hidden=hidden)
        print(f"\naccuracy: GPT-NeoX 6 layers, hidden {hidden} (probes = layers 5/3/1 dense_4h_to_h, {4 * hidden} -> "
              f"{hidden}), K=4, 8 steps x 2 micro-batches x 4 x 32 tokens, mean over 5 seeds")
        print("| m_out=m_in | corr(W) | corr(W no self, /mean norm) | Gram rel. err | bytes/probe here | "
              "bytes/probe Pythia-1B, K=22 |")
        for m in sizes:
            corr, corr_ns, err = acc[m]
            print(f"| {m} | {corr:.3f} | {corr_ns:.3f} | {err:.3f} | {_bytes_per_probe(hidden, 4 * hidden, m, K):,} "
                  f"| {_bytes_per_probe(2048, 8192, m, 22):,} |")
        print(f"| exact | 1 | 1 | 0 | {_bytes_per_probe(hidden, 4 * hidden, None, K):,} "
              f"| {_bytes_per_probe(2048, 8192, None, 22):,} |")
