"""What AC-ODM costs per training step, measured side by side in one process.

The same model, batch and data are trained with (a) static mixing, (b) AC-ODM with sketched alignment
statistics and an actor update every step (the default known-gradient actor), (c) AC-ODM with exact statistics, one step of each in turn
(interleaved), for demo_cpu.yml and a pythia_70m-shaped model at a short sequence. Prints step-time
ratios (b)/(a), (c)/(a), the extra memory each variant holds, and where (b)'s overhead goes.

    python benchmarks/mixing_overhead.py                  # CPU
    python benchmarks/mixing_overhead.py --device cuda    # on a GPU also reports peak-memory differences
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from harness import ROOT, build_trainer, interleaved, synthetic_data

SHAPES = {
    # name: (config, overrides)
    "demo_cpu": ("configs/demo_cpu.yml", []),
    # The paper's actor-critic (1024 x 5 blocks) at the Pythia shape.
    "pythia_70m@seq128": ("configs/demo_cpu.yml", [
        "model.num_layers=6", "model.hidden_size=512", "model.num_heads=8", "model.vocab_size=50277",
        "model.max_seq_len_tokens=2048", "data.seq_len_tokens=128", "data.global_batch_sequences=16",
        "data.micro_batch_sequences=8", "data.tokenizer=null", "mixing.acodm.hidden_size=1024",
        "mixing.acodm.num_hidden_layers=5"]),
    # The paper's 410M target at its sequence length, one micro-batch (GPU; benchmarks/gpu_check.sh).
    "pythia_410m@seq1024": ("configs/demo_cpu.yml", [
        "model.num_layers=24", "model.hidden_size=1024", "model.num_heads=16", "model.vocab_size=50277",
        "model.max_seq_len_tokens=2048", "data.seq_len_tokens=1024", "data.global_batch_sequences=8",
        "data.micro_batch_sequences=8", "data.tokenizer=null", "mixing.acodm.hidden_size=1024",
        "mixing.acodm.num_hidden_layers=5"]),
}
VARIANTS = {
    "static": ["mixing.method=static"],
    "acodm_sketch": ["mixing.method=acodm", "mixing.alignment.mode=sketch", "mixing.acodm.warmup_steps=0"],
    "acodm_exact": ["mixing.method=acodm", "mixing.alignment.mode=exact", "mixing.acodm.warmup_steps=0"],
}


def extra_memory_bytes(trainer) -> int:
    """Memory a variant holds beyond static mixing: probe statistics and the actor-critic (parameters, Adam
    state, targets) and its replay buffer."""
    total = 0
    if trainer.mixing.statistics.alignment is not None:
        total += trainer.mixing.statistics.alignment.memory_bytes()
    ddpg = getattr(trainer.mixing.mixer, "ddpg", None)
    if ddpg is not None:
        import torch

        for net in (ddpg.actor, ddpg.critic, ddpg.actor_target, ddpg.critic_target):
            total += sum(p.numel() * p.element_size() for p in net.parameters())
        for opt in (ddpg.actor_opt, ddpg.critic_opt):
            for state in opt.state.values():
                total += sum(v.numel() * v.element_size() for v in state.values() if torch.is_tensor(v))
        replay = trainer.mixing.mixer.replay
        total += sum(a.nbytes for a in (replay.states, replay.actions, replay.rewards, replay.next_states))
    return total


def prefill_replay(trainer) -> None:
    """Random transitions, so every timed step runs a full actor update on a minibatch (a run does once its
    replay holds ``batch_size`` steps, i.e. from early in the run on)."""
    mixer = trainer.mixing.mixer
    replay = getattr(mixer, "replay", None)
    if replay is None:
        return
    rng = np.random.default_rng(0)
    k, dim = mixer.num_domains, mixer.spec.dim
    for _ in range(mixer.config.batch_size):
        action = rng.dirichlet(np.ones(k))
        replay.add(rng.normal(size=dim), action, rng.normal(size=replay.rewards.shape[1]), rng.normal(size=dim))
        if mixer.surrogate is not None:  # the known-gradient actor's replay: (state, Ĝ, t̂)
            mixer.surrogate.add(rng.normal(size=dim), np.eye(k), rng.normal(size=k))


def breakdown(trainer, repeats: int) -> dict[str, float]:
    """Median ms of the pieces of an AC-ODM step that a static step does not have."""
    from acodm.mixers.base import StepStats

    alignment = trainer.mixing.statistics.alignment
    stats = trainer.train_step(trainer.loader.next_step())
    trainer.step += 1
    pieces: dict[str, list[float]] = {"gram from statistics": [], "probe norms": [], "mixer observe (actor update)": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        packed = alignment.packed().double()
        alignment.gram(packed, stats.token_count)
        t1 = time.perf_counter()
        norms = trainer.mixing.probe_norms()
        t2 = time.perf_counter()
        trainer.mixing.mixer.observe(StepStats(step=trainer.step, total_steps=trainer.total_steps,
                                               loss_sum=stats.loss_sum, token_count=stats.token_count,
                                               sample_count=stats.sample_count, gram=stats.gram, probe_norms=norms))
        t3 = time.perf_counter()
        trainer.step += 1
        pieces["gram from statistics"].append(t1 - t0)
        pieces["probe norms"].append(t2 - t1)
        pieces["mixer observe (actor update)"].append(t3 - t2)
    return {k: 1e3 * statistics.median(v) for k, v in pieces.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--shapes", default="demo_cpu,pythia_70m@seq128",
                        help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    import torch

    result = {}
    for shape in args.shapes.split(","):
        config, shape_overrides = SHAPES[shape]
        from neox.config import load_config

        vocab = load_config(ROOT / config, shape_overrides).model.vocab_size
        data = synthetic_data(num_domains=4, vocab_size=vocab)
        common = [*shape_overrides, f"data.path={data}", f"device={args.device}", "data.tokenizer=null",
                  "mixing.acodm.num_probe_layers=4"]
        trainers = {name: build_trainer(ROOT / config, common + extra) for name, extra in VARIANTS.items()}
        for trainer in trainers.values():
            prefill_replay(trainer)
        peak = {}
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        med = interleaved(trainers, rounds=args.rounds)
        n_params = sum(p.numel() for p in trainers["static"].engine.module.parameters())
        acodm_cfg = trainers["acodm_sketch"].mixing.mixer.config
        print(f"\n{shape}: {n_params / 1e6:.1f}M params, actor-critic {acodm_cfg.hidden_size} x "
              f"{acodm_cfg.num_hidden_layers} (actor minibatch {acodm_cfg.batch_size}), "
              f"batch {trainers['static'].cfg.data.global_batch_sequences} x "
              f"{trainers['static'].cfg.data.seq_len_tokens} tokens, device {args.device}, torch threads "
              f"{torch.get_num_threads()}, median of {args.rounds} interleaved steps")
        print(f"{'variant':<14}{'ms/step':>10}{'ratio to static':>17}{'extra memory MiB':>18}")
        for name, trainer in trainers.items():
            peak[name] = extra_memory_bytes(trainer)
            print(f"{name:<14}{1e3 * med[name]:>10.1f}{med[name] / med['static']:>17.3f}{peak[name] / 2**20:>18.2f}")
        result[f"sketch_vs_static_{shape.split('@')[0]}"] = med["acodm_sketch"] / med["static"]
        result[f"exact_vs_static_{shape.split('@')[0]}"] = med["acodm_exact"] / med["static"]
        parts = breakdown(trainers["acodm_sketch"], repeats=3)
        print("acodm_sketch overhead outside forward/backward (median ms): "
              + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()))
    print("result: " + " ".join(f"{k}={v:.3f}" for k, v in result.items()))


if __name__ == "__main__":
    main()
