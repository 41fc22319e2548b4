#!/usr/bin/env python
"""Mixture-plan build time vs megatron-core's blending helper, and loader throughput.

    python benchmarks/data_plan.py [--domains 22] [--batch 1152] [--steps 100]

1. Plan: our MixturePlan producing ``steps`` global batches of ``batch`` sequences over ``domains``
   domains (exact per-batch counts, shuffled slots), against megatron-core's compiled
   ``helpers.build_blending_indices`` building a blend index of the same number of samples (which
   gives neither exact per-batch counts nor a shuffled order). Both measured in this process, best
   of several repeats; the ratio is what to read.
2. Loader: MicroBatchLoader samples/s on synthetic domains at two sequence lengths (one rank, the
   whole global batch), to hold against the samples/s a training step consumes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from neox.data import MicroBatchLoader, MixturePlan, open_domains  # noqa: E402
from tests.synthetic_data import write_synthetic_domains  # noqa: E402


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_plan(num_domains: int, batch: int, steps: int, update_interval: int, repeats: int) -> None:
    warnings.filterwarnings("ignore")
    from megatron.core.datasets import helpers

    rng = np.random.default_rng(0)
    weights = rng.dirichlet(np.ones(num_domains))
    schedule = [rng.dirichlet(np.ones(num_domains)) for _ in range(steps)]
    num_samples = batch * steps

    def ours_fixed():
        plan = MixturePlan([10**9] * num_domains, batch, seed=0, initial_weights=weights)
        for _ in range(steps):
            plan.next_global_batch()

    def ours_updating():
        plan = MixturePlan([10**9] * num_domains, batch, seed=0, initial_weights=weights)
        for step in range(steps):
            if step % update_interval == 0:
                plan.set_weights(schedule[step])
            plan.next_global_batch()

    def megatron():
        dataset_index = np.zeros(num_samples, dtype=np.int16)
        dataset_sample_index = np.zeros(num_samples, dtype=np.int64)
        helpers.build_blending_indices(dataset_index, dataset_sample_index, weights, num_domains,
                                       num_samples, False)

    t_megatron = best_of(megatron, repeats)
    t_fixed = best_of(ours_fixed, repeats)
    t_updating = best_of(ours_updating, repeats)
    print(f"plan: {num_domains} domains x {batch} sequences x {steps} steps = {num_samples} samples "
          f"(best of {repeats})")
    print(f"  megatron-core build_blending_indices          {t_megatron * 1e3:9.3f} ms")
    print(f"  MixturePlan, fixed weights                    {t_fixed * 1e3:9.3f} ms   "
          f"ratio ours/megatron {t_fixed / t_megatron:6.2f}")
    print(f"  MixturePlan, new weights every {update_interval:>3} steps      {t_updating * 1e3:9.3f} ms   "
          f"ratio ours/megatron {t_updating / t_megatron:6.2f}")
    print(f"  per step: MixturePlan {t_updating / steps * 1e6:.1f} us")


def bench_loader(num_domains: int, batch: int, seq_lens: list[int], steps: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = os.path.join(tmp, "data")
        write_synthetic_domains(data_dir, num_domains=num_domains, docs_per_domain=200, vocab_size=50304,
                                seed=0, split=("train",), mean_doc_tokens=512)
        print(f"loader: {num_domains} synthetic domains (~{200 * 512 // 1000}k tokens each), one rank "
              f"takes the whole global batch of {batch}, {steps} steps")
        for seq_len in seq_lens:
            corpus = open_domains(data_dir, "train", seq_len_tokens=seq_len, seed=0)
            plan = MixturePlan(corpus.samples_per_epoch, batch, seed=0)
            loader = MicroBatchLoader(corpus, plan, dp_rank=0, dp_size=1, micro_batch_sequences=batch // 8)
            loader.next_step()  # first epoch permutations
            start = time.perf_counter()
            for step in range(steps):
                if step % 10 == 0:
                    plan.set_weights(np.random.default_rng(step).dirichlet(np.ones(num_domains)))
                loader.next_step()
            seconds = time.perf_counter() - start
            samples = steps * batch
            print(f"  seq {seq_len:>5}: {samples / seconds:12.0f} samples/s  "
                  f"{samples * (seq_len + 1) / seconds / 1e6:8.1f} M tokens/s  "
                  f"({seconds / steps * 1e3:.2f} ms per global batch)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--domains", type=int, default=22)
    p.add_argument("--batch", type=int, default=1152)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--update-interval", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--loader-steps", type=int, default=20)
    p.add_argument("--seq-lens", type=int, nargs="+", default=[128, 1024])
    args = p.parse_args()
    bench_plan(args.domains, args.batch, args.steps, args.update_interval, args.repeats)
    bench_loader(args.domains, args.batch, args.seq_lens, args.loader_steps)


if __name__ == "__main__":
    main()
