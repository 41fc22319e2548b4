"""Training-step throughput: our GPTNeoX versus transformers' GPTNeoXForCausalLM, side by side.

One step = forward, mean next-token loss (fp32 cross-entropy), backward, torch.optim.AdamW step. Both
models hold the same weights and see the same batches; timing alternates ours/theirs for several rounds
(first mover swapped each round) so machine noise hits both equally; medians are reported.

    python benchmarks/train_step.py                       # CPU, tiny config (4 x 256, seq 256, batch 8, vocab 8192)
    python benchmarks/train_step.py --device cuda         # GPU: pythia_160m / pythia_410m, seq 1024, bf16, MFU

On CUDA the models keep fp32 weights and run under bf16 autocast (mixed precision, fused AdamW); MFU =
train_flops_per_token x tokens/s / peak, with flops_per_token from neox.model.flops_per_token
(6 x matmul params + attention term) and a default peak of 989 TFLOP/s (H100/H200 dense bf16).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from neox.model import ModelConfig, build_model, flops_per_token, hf_config, per_token_loss  # noqa: E402

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
                 autocast_dtype: torch.dtype | None, compile_models: bool, lr: float) -> list[Runner]:
    import transformers

    torch.manual_seed(0)
    ours = build_model(cfg, device=device).train()
    theirs = transformers.GPTNeoXForCausalLM(hf_config(cfg)).to(device).train()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    fused = device.type == "cuda"
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1, fused=fused)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1, fused=fused)
    fwd_ours, fwd_theirs = ours, theirs
    if compile_models:
        fwd_ours, fwd_theirs = torch.compile(ours), torch.compile(theirs)
    x, y = batch
    autocast = (lambda: torch.autocast(device.type, dtype=autocast_dtype)) if autocast_dtype else contextlib.nullcontext

    def step_ours() -> torch.Tensor:
        with autocast():
            loss = per_token_loss(fwd_ours(x), y).mean()
        loss.backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)
        return loss

    def step_theirs() -> torch.Tensor:
        with autocast():
            logits = fwd_theirs(input_ids=x).logits
            # HF's own causal-LM loss (fp32 upcast, mean); labels already shifted.
            loss = theirs.loss_function(logits=logits, labels=None, shift_labels=y, vocab_size=cfg.padded_vocab_size)
        loss.backward()
        opt_theirs.step()
        opt_theirs.zero_grad(set_to_none=True)
        return loss

    attn = getattr(theirs.config, "_attn_implementation", "?")
    return [Runner("ours", step_ours), Runner(f"transformers ({attn})", step_theirs)]


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
    first, second = (losses[r.name] for r in runners)
    if abs(first - second) > 1e-2 * max(1.0, abs(first)):
        raise RuntimeError(f"losses diverged after warm-up: {losses}")
    tokens_per_s: dict[str, list[float]] = {r.name: [] for r in runners}
    for i in range(rounds):
        order = runners if i % 2 == 0 else runners[::-1]
        for r in order:
            _sync(device)
            t0 = now()
            for _ in range(steps_per_round):
                r.step()
            _sync(device)
            tokens_per_s[r.name].append(steps_per_round * tokens_per_step / (now() - t0))
    return tokens_per_s


def report(title: str, tokens_per_s: dict[str, list[float]], flops_tok: int | None, peak_tflops: float) -> None:
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
    ours, theirs = tokens_per_s[names[0]], tokens_per_s[names[1]]
    # Neighbouring measurements share the machine's state, so the median of the per-round ratios is the
    # statistic least moved by load drifting during the run; best-of is the least-disturbed single round.
    paired = [a / b for a, b in zip(ours, theirs)]
    print(f"ours/theirs: median of per-round ratios {statistics.median(paired):.3f}, "
          f"ratio of medians {medians[names[0]] / medians[names[1]]:.3f}, ratio of bests {max(ours) / max(theirs):.3f}")
    print(f"per-round ratios: {' '.join(f'{x:.3f}' for x in paired)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--steps-per-round", type=int, default=2)
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="wall: elapsed time; cpu: process CPU time (CPU only; robust on a busy machine)")
    p.add_argument("--warmup-steps", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
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
          f"{'bf16 autocast' if autocast_dtype else 'fp32'}{', compiled' if args.compile else ''}, "
          f"{args.rounds} rounds x {args.steps_per_round} steps, {args.clock} clock")
    for title, cfg in configs.items():
        g = torch.Generator().manual_seed(1)
        tokens = torch.randint(0, cfg.vocab_size, (args.batch, seq + 1), generator=g).to(device)
        batch = (tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous())
        runners = make_runners(cfg, device, batch, autocast_dtype, args.compile, args.lr)
        tps = measure(runners, device, args.rounds, args.steps_per_round, args.warmup_steps, args.batch * seq,
                      args.clock)
        flops_tok = flops_per_token(cfg, seq) if device.type == "cuda" else None
        report(f"{title} (params {sum(p.numel() for p in build_model(cfg, 'meta').parameters()):,})",
               tps, flops_tok, args.peak_tflops)
        del runners
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
