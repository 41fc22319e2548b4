"""Time of one ``Mixer.observe()`` per method, with AC-ODM at paper size (K = 22, state dim 85,
hidden 1024 × 5 blocks, minibatch 32, a full DDPG update per observe).

    python benchmarks/mixer_update.py                 # CPU, 20 timed calls per method
    python benchmarks/mixer_update.py --device cuda --repeats 50

``time_mixer_updates(...)`` returns the numbers so a caller can put them next to the time of one
training step measured in the same process (e.g. a "relative to one demo_cpu.yml step" column).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from acodm.actor_export import export_actor  # noqa: E402
from acodm.mixers import StepStats, build_mixer  # noqa: E402
from acodm.serialization import save_state  # noqa: E402

PAPER_ACODM = dict(hidden_size=1024, num_hidden_layers=5, num_probe_layers=9, batch_size=32, warmup_steps=0)


def _stats(step: int, total: int, k: int, num_probes: int, rng: np.random.Generator) -> StepStats:
    tokens = rng.integers(1_000, 50_000, size=k).astype(np.float64)
    g = rng.normal(size=(k, 64))
    return StepStats(step, total, rng.uniform(1.5, 4.0, k) * tokens, tokens, np.round(tokens / 1024), gram=g @ g.T,
                     probe_norms=rng.uniform(10, 20, num_probes), excess_loss_sum=rng.uniform(0, 0.3, k) * tokens)  # fmt: skip


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def time_mixer_updates(
    num_domains: int = 22,
    num_probes: int = 9,
    repeats: int = 20,
    device: str = "cpu",
    methods: tuple[str, ...] = ("static", "odm", "doge", "doremi", "acodm", "acodm_frozen"),
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """{method: {"median_ms", "min_ms", "max_ms", "repeats"}} for one observe() each."""
    domains = [f"domain_{i:02d}" for i in range(num_domains)]
    total = 100_000
    rng = np.random.default_rng(seed)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            params: dict = {}
            if method == "acodm":
                params = dict(PAPER_ACODM, num_probe_layers=num_probes, device=device)
            elif method == "acodm_frozen":
                trained = build_mixer("acodm", domains, total, seed, **dict(PAPER_ACODM, num_probe_layers=num_probes))
                save_state(Path(tmp) / "ckpt" / "mixer", trained.state_dict())
                params = dict(actor=str(export_actor(Path(tmp) / "ckpt", Path(tmp) / "actor")), warmup_steps=0,
                              device=device)  # fmt: skip
            mixer = build_mixer(method, domains, total, seed, **params)
            step = 0
            # Fill the replay buffer past one minibatch (and warm up kernels) before timing.
            for _ in range(PAPER_ACODM["batch_size"] + 3):
                step += 1
                mixer.observe(_stats(step, total, num_domains, num_probes, rng))
            times_ms = []
            for _ in range(repeats):
                step += 1
                stats = _stats(step, total, num_domains, num_probes, rng)
                _sync(device)
                start = time.perf_counter()
                metrics = mixer.observe(stats)
                _sync(device)
                times_ms.append(1e3 * (time.perf_counter() - start))
            if method == "acodm":
                # the default's known-gradient actor update, or a DDPG update (reward: paper)
                assert "mixer/surrogate" in metrics or "mixer/critic_loss" in metrics, \
                    "the timed calls must include an actor update"
            results[method] = {"median_ms": statistics.median(times_ms), "min_ms": min(times_ms),
                               "max_ms": max(times_ms), "repeats": float(repeats)}  # fmt: skip
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--num-domains", type=int, default=22)
    parser.add_argument("--num-probes", type=int, default=9)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    parser.add_argument("--no-train-step", action="store_true",
                        help="skip the reference: one training step of configs/demo_cpu.yml (static mixing)")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    results = time_mixer_updates(args.num_domains, args.num_probes, args.repeats, args.device)
    step_ms = None if args.no_train_step else 1e3 * demo_train_step_seconds(args.num_domains, args.repeats)
    print(f"one observe() per method: K={args.num_domains}, P={args.num_probes}, state dim "
          f"{3 * args.num_domains + 2 * args.num_probes + 1}, device {args.device}, torch threads "
          f"{torch.get_num_threads()}, {args.repeats} timed calls")  # fmt: skip
    if step_ms is not None:
        print(f"reference: one training step of configs/demo_cpu.yml (static mixing, {args.num_domains} synthetic "
              f"domains, same process): {step_ms:.1f} ms")
    print(f"{'method':<14}{'median ms':>12}{'min ms':>10}{'max ms':>10}"
          + (f"{'/ demo step':>12}" if step_ms is not None else ""))
    for method, r in results.items():
        ratio = f"{r['median_ms'] / step_ms:>12.4f}" if step_ms is not None else ""
        print(f"{method:<14}{r['median_ms']:>12.3f}{r['min_ms']:>10.3f}{r['max_ms']:>10.3f}{ratio}")


def demo_train_step_seconds(num_domains: int, repeats: int) -> float:
    """Median seconds of one optimizer step of demo_cpu.yml's model and batch with static mixing."""
    from harness import ROOT, build_trainer, interleaved, synthetic_data

    data = synthetic_data(num_domains=num_domains, vocab_size=4096)
    trainer = build_trainer(ROOT / "configs" / "demo_cpu.yml", [f"data.path={data}", "data.tokenizer=null",
                                                                  "mixing.method=static"])
    return interleaved({"static": trainer}, rounds=max(3, repeats // 2))["static"]


if __name__ == "__main__":
    main()
