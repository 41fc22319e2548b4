"""Training-step throughput: our fastest step and our eager step versus transformers' GPTNeoXForCausalLM
with its own loss and torch's default (foreach) AdamW, side by side.

One step = forward, mean next-token loss (fp32 cross-entropy), backward, AdamW step. "ours compiled" is
the trainer's fast path: per-block torch.compile (neox.model.compile_layers), the chunked per_token_loss
and fused AdamW; "ours eager" the same without compile. All models hold the same weights and see the same
batches; timing rotates the runners' order each round so machine noise hits all alike; medians are
reported, with the ratios of the per-round pairs. Then one profiled step of ours shows where time goes:
the matmul share (aten::mm/addmm/bmm/linear self time over all ops' self time) bounds what fusing the
rest can give, 1 / share. The last line is

    result: compiled_vs_hf=R eager_vs_hf=R matmul_share=F

    python benchmarks/train_step.py                       # CPU, tiny config (4 x 256, seq 256, batch 8, vocab 8192)
    python benchmarks/train_step.py --device cuda         # GPU: pythia_160m / pythia_410m, seq 1024, bf16, MFU
    python benchmarks/train_step.py --no-compile          # skip compiling (compiled_vs_hf is then eager's)

On CUDA the models keep fp32 weights and run under bf16 autocast (mixed precision, fused AdamW); MFU =
train_flops_per_token x tokens/s / peak, with flops_per_token from neox.model.flops_per_token
(6 x matmul params + attention term) and a default peak of 989 TFLOP/s (H100/H200 dense bf16).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from neox.model import (ModelConfig, build_model, compile_layers, flops_per_token, hf_config,  # noqa: E402
                        per_token_loss)

GPU_SIZES = {
    "pythia_160m": dict(num_layers=12, hidden_size=768, num_heads=12),
    "pythia_410m": dict(num_layers=24, hidden_size=1024, num_heads=16),
}


@dataclass
class Runner:
    name: str
    step: Callable[[], torch.Tensor]  # one training step; returns the loss


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_runners(cfg: ModelConfig, device: torch.device, batch: tuple[torch.Tensor, torch.Tensor],
                 autocast_dtype: torch.dtype | None, compile_ours: bool, lr: float) -> list[Runner]:
    import transformers

    torch.manual_seed(0)
    reference = build_model(cfg, device=device)
    x, y = batch
    autocast = (lambda: torch.autocast(device.type, dtype=autocast_dtype)) if autocast_dtype else contextlib.nullcontext
    adamw = dict(lr=lr, betas=(0.9, 0.95), weight_decay=0.1)

    def ours(compiled: bool) -> Runner:
        model = copy.deepcopy(reference).train()
        if compiled:
            compile_layers(model)
        # One multi-tensor kernel per step instead of a dozen passes over every parameter (CPU and CUDA).
        opt = torch.optim.AdamW(model.parameters(), fused=True, **adamw)

        def step() -> torch.Tensor:
            with autocast():
                loss = per_token_loss(model(x), y).mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss

        return Runner("ours compiled" if compiled else "ours eager", step)

    theirs = transformers.GPTNeoXForCausalLM(hf_config(cfg)).to(device).train()
    theirs.load_state_dict(reference.state_dict(), strict=True)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), fused=device.type == "cuda", **adamw)

    def step_theirs() -> torch.Tensor:
        with autocast():
            logits = theirs(input_ids=x).logits
            # HF's own causal-LM loss (fp32 upcast, mean); labels already shifted.
            loss = theirs.loss_function(logits=logits, labels=None, shift_labels=y, vocab_size=cfg.padded_vocab_size)
        loss.backward()
        opt_theirs.step()
        opt_theirs.zero_grad(set_to_none=True)
        return loss

    attn = getattr(theirs.config, "_attn_implementation", "?")
    runners = [ours(compiled=True)] if compile_ours else []
    return runners + [ours(compiled=False), Runner(f"transformers ({attn})", step_theirs)]


def measure(runners: list[Runner], device: torch.device, rounds: int, steps_per_round: int,
            warmup_steps: int, tokens_per_step: int, clock: str) -> dict[str, list[float]]:
    # "cpu" = this process's CPU seconds (all threads): on a shared, oversubscribed CPU machine wall time
    # mostly measures the neighbours; CPU time does not (with one thread it is the cleanest signal).
    now = time.process_time if clock == "cpu" else time.perf_counter
    losses = {}
    for r in runners:  # warm-up: allocator, kernels, compilation
        for _ in range(warmup_steps):
            losses[r.name] = r.step().item()
    # Same weights, same data, same optimizer: the losses must agree, or the comparison is meaningless.
    first = losses[runners[0].name]
    if any(abs(v - first) > 1e-2 * max(1.0, abs(first)) for v in losses.values()):
        raise RuntimeError(f"losses diverged after warm-up: {losses}")
    tokens_per_s: dict[str, list[float]] = {r.name: [] for r in runners}
    for i in range(rounds):
        shift = i % len(runners)
        for r in runners[shift:] + runners[:shift]:
            _sync(device)
            t0 = now()
            for _ in range(steps_per_round):
                r.step()
            _sync(device)
            tokens_per_s[r.name].append(steps_per_round * tokens_per_step / (now() - t0))
    return tokens_per_s


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul", "aten::baddbmm")


def matmul_share(runner: Runner, steps: int = 2) -> tuple[float, list[tuple[str, float]]]:
    """Share of the matmuls in the wall time of ``steps`` profiled steps, and the top ops' shares.

    The denominator is the steps' time, not the sum over recorded ops: inductor's generated CPU kernels are
    not profiler ops, so a sum of ops would leave the fused code out and inflate the share.
    """
    from torch.profiler import ProfilerActivity, profile

    on_gpu = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profile(activities=activities) as prof:
        _sync(torch.device("cuda" if on_gpu else "cpu"))
        t0 = time.perf_counter()
        for _ in range(steps):
            runner.step()
        _sync(torch.device("cuda" if on_gpu else "cpu"))
        elapsed_us = (time.perf_counter() - t0) * 1e6
    times = {}
    for e in prof.key_averages():
        t = e.self_device_time_total if on_gpu else e.self_cpu_time_total
        if t > 0 and (e.key.startswith("aten::") or not on_gpu):
            times[e.key] = times.get(e.key, 0.0) + t
    # Only operator time: profiler scopes (autograd nodes, "Torch-Compiled Region", optimizer records)
    # nest the ops and would count them twice.
    ops = {k: v for k, v in times.items() if not k.startswith(("autograd::", "Optimizer.", "## ", "Torch-Compiled",
                                                                  "CompiledFunction", "ProfilerStep"))}
    total = elapsed_us
    mm = sum(v for k, v in ops.items() if k in MATMUL_OPS)
    top = sorted(((k, v / total) for k, v in ops.items()), key=lambda kv: -kv[1])[:8]
    return mm / total, top


def report(title: str, tokens_per_s: dict[str, list[float]], flops_tok: int | None,
           peak_tflops: float) -> dict[str, float]:
    """Prints the table; returns each of our runners' median per-round ratio to transformers (the last)."""
    names = list(tokens_per_s)
    medians = {n: statistics.median(v) for n, v in tokens_per_s.items()}
    print(f"\n{title}")
    header = f"{'model':<28} {'median tok/s':>13} {'best tok/s':>11}"
    if flops_tok is not None:
        header += f" {'TFLOP/s':>8} {'MFU':>6}"
    print(header)
    for n in names:
        line = f"{n:<28} {medians[n]:>13.1f} {max(tokens_per_s[n]):>11.1f}"
        if flops_tok is not None:
            tflops = medians[n] * flops_tok / 1e12
            line += f" {tflops:>8.1f} {tflops / peak_tflops:>6.1%}"
        print(line)
    theirs = tokens_per_s[names[-1]]
    ratios = {}
    for n in names[:-1]:
        # Neighbouring measurements share the machine's state, so the median of the per-round ratios is the
        # statistic least moved by load drifting during the run; best-of is the least-disturbed single round.
        paired = [a / b for a, b in zip(tokens_per_s[n], theirs)]
        ratios[n] = statistics.median(paired)
        print(f"{n} / transformers: median of per-round ratios {ratios[n]:.3f}, ratio of medians "
              f"{medians[n] / medians[names[-1]]:.3f}, ratio of bests {max(tokens_per_s[n]) / max(theirs):.3f}")
        print(f"  per-round ratios: {' '.join(f'{x:.3f}' for x in paired)}")
    return ratios


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--steps-per-round", type=int, default=2)
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="wall: elapsed time; cpu: process CPU time (CPU only; robust on a busy machine)")
    p.add_argument("--warmup-steps", type=int, default=2)
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip the compiled runner")
    p.add_argument("--lr", type=float, default=3e-4)
    # CPU tiny config
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--seq-len", type=int, default=None, help="default: 256 on CPU, 1024 on CUDA")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    # CUDA
    p.add_argument("--sizes", nargs="+", default=list(GPU_SIZES), choices=list(GPU_SIZES))
    p.add_argument("--peak-tflops", type=float, default=989.0, help="accelerator peak bf16 dense TFLOP/s")
    args = p.parse_args(argv)

    try:
        import transformers  # noqa: F401
    except ImportError:
        p.error("this benchmark compares against transformers; pip install transformers")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda given but CUDA is not available")
    if device.type == "cuda" and args.clock == "cpu":
        p.error("--clock cpu measures host CPU time; use --clock wall with --device cuda")

    if device.type == "cpu":
        seq = args.seq_len or 256
        configs = {f"tiny {args.layers}x{args.hidden}": ModelConfig(
            num_layers=args.layers, hidden_size=args.hidden, num_heads=args.heads, vocab_size=args.vocab,
            max_seq_len_tokens=seq)}
        autocast_dtype = None
    else:
        seq = args.seq_len or 1024
        configs = {name: ModelConfig(**shape, vocab_size=50277, max_seq_len_tokens=max(seq, 2048))
                   for name, shape in GPU_SIZES.items() if name in args.sizes}
        autocast_dtype = torch.bfloat16
        torch.backends.cuda.matmul.allow_tf32 = True

    print(f"torch {torch.__version__}, device {device}"
          f"{' ' + torch.cuda.get_device_name(device) if device.type == 'cuda' else ''}, "
          f"threads {torch.get_num_threads()}, batch {args.batch} x seq {seq}, "
          f"{'bf16 autocast' if autocast_dtype else 'fp32'}, "
          f"{args.rounds} rounds x {args.steps_per_round} steps, {args.clock} clock")
    results = []
    for title, cfg in configs.items():
        g = torch.Generator().manual_seed(1)
        tokens = torch.randint(0, cfg.vocab_size, (args.batch, seq + 1), generator=g).to(device)
        batch = (tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous())
        runners = make_runners(cfg, device, batch, autocast_dtype, args.compile, args.lr)
        tps = measure(runners, device, args.rounds, args.steps_per_round, args.warmup_steps, args.batch * seq,
                      args.clock)
        flops_tok = flops_per_token(cfg, seq) if device.type == "cuda" else None
        ratios = report(f"{title} (params {sum(p.numel() for p in build_model(cfg, 'meta').parameters()):,})",
                        tps, flops_tok, args.peak_tflops)
        share, top = matmul_share(runners[0])
        print(f"profile of {runners[0].name}: matmul share {share:.3f} -> ceiling for fusing the rest "
              f"{1 / share:.2f}x this step; top ops: " + ", ".join(f"{k} {v:.1%}" for k, v in top))
        eager = ratios["ours eager"]
        results.append(f"compiled_vs_hf={ratios.get('ours compiled', eager):.3f} eager_vs_hf={eager:.3f} "
                       f"matmul_share={share:.3f}")
        del runners
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for line in results:
        print(f"result: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
