"""Step time per parallel layout, measured side by side in one run.

N processes (default 2) join one job; each builds one trainer per layout -- data parallel only, tensor
parallel (tensor=2), pipeline parallel (pipe=2) and, with N a multiple of 4, both (pipe=2 x tensor=2), the
remaining factor of N as data parallelism -- on the
same model, data and global batch, and the layouts take optimizer steps in turn (interleaved, so a load
change hits all of them alike). Prints the median step time, tokens/s and the ratio to the data-parallel
layout, so a regression in a communication path (the TP all-reduces, the pipeline's send/recv, the one
statistics all-reduce) shows up as a ratio that moves.

    python benchmarks/parallel_overhead.py                       # CPU, gloo, 2 processes, tiny model
    python benchmarks/parallel_overhead.py --device cuda --nproc 8 --shape pythia_160m@seq512   # a GPU box

On a CPU the numbers are about communication overhead, not speed-ups: both processes share the same
cores, so model parallelism cannot win there (it splits work the data-parallel layout already spreads).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from harness import ROOT, build_trainer, interleaved, synthetic_data

SHAPES = {
    # name: overrides on configs/demo_cpu.yml
    "tiny": ["model.num_layers=4", "model.hidden_size=128", "model.num_heads=4", "model.vocab_size=512",
             "model.make_vocab_size_divisible_by=128", "model.max_seq_len_tokens=128", "data.seq_len_tokens=128",
             "data.global_batch_sequences=8", "data.micro_batch_sequences=2"],
    "pythia_160m@seq512": ["model.num_layers=12", "model.hidden_size=768", "model.num_heads=12",
                           "model.vocab_size=50277", "model.max_seq_len_tokens=2048", "data.seq_len_tokens=512",
                           "data.global_batch_sequences=64", "data.micro_batch_sequences=4"],
}
LAYOUTS = {"data": [], "tensor2": ["parallel.tensor=2"], "pipe2": ["parallel.pipe=2"]}
LAYOUTS_4 = {"pipe2_tensor2": ["parallel.pipe=2", "parallel.tensor=2"]}  # with --nproc a multiple of 4


def _worker(rank: int, nproc: int, port: int, args: argparse.Namespace, data: str, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(nproc),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), TOKENIZERS_PARALLELISM="false")
    import torch

    if args.device == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // nproc))
    common = [*SHAPES[args.shape], f"data.path={data}", "data.tokenizer=null", f"device={args.device}",
              f"mixing.method={args.method}", "eval.interval_steps=0", "eval.at_start=false",
              "schedule.train_steps=100000"]
    layouts = {**LAYOUTS, **(LAYOUTS_4 if nproc % 4 == 0 else {})}
    trainers = {name: build_trainer(ROOT / "configs/demo_cpu.yml", common + extra) for name, extra in layouts.items()}
    times = interleaved(trainers, rounds=args.rounds, warmup=2)
    if rank == 0:
        cfg = trainers["data"].cfg
        tokens = cfg.data.global_batch_sequences * cfg.data.seq_len_tokens
        rows = {name: {"step_s": t, "tokens_per_s": tokens / t, "ratio_to_data": t / times["data"],
                       "layout": trainers[name]._layout()} for name, t in times.items()}
        Path(out).write_text(json.dumps(rows))
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=2, help="processes (a multiple of 2)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--shape", default="tiny", choices=list(SHAPES))
    parser.add_argument("--method", default="static", help="mixing.method (acodm adds the alignment statistics)")
    parser.add_argument("--rounds", type=int, default=10, help="timed steps per layout")
    parser.add_argument("--json", default=None, help="also write the table here")
    args = parser.parse_args()
    if args.nproc < 2 or args.nproc % 2:
        parser.error("--nproc must be an even number >= 2 (tensor=2 and pipe=2 need pairs)")

    import torch.multiprocessing as mp

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from harness import init_single_process, temporary_directory

    init_single_process()
    from neox.training.distributed import _free_port

    vocab = int(next(o.split("=")[1] for o in SHAPES[args.shape] if o.startswith("model.vocab_size=")))
    data = synthetic_data(num_domains=4, vocab_size=vocab)
    out = temporary_directory("acodm-bench-par-") / "result.json"
    mp.spawn(_worker, args=(args.nproc, _free_port(), args, str(data), str(out)), nprocs=args.nproc, join=True)
    rows = json.loads(out.read_text())
    print(f"{args.nproc} processes, {args.device}, shape {args.shape}, mixing {args.method}, "
          f"median of {args.rounds} interleaved steps")
    print(f"{'layout':<14} {'pipe':>4} {'tensor':>6} {'data':>4} {'step ms':>9} {'tokens/s':>10} {'vs data':>8}")
    for name, r in rows.items():
        lay = r["layout"]
        print(f"{name:<14} {lay['pipe']:>4} {lay['tensor']:>6} {lay['data']:>4} {1000 * r['step_s']:>9.1f} "
              f"{r['tokens_per_s']:>10.0f} {r['ratio_to_data']:>8.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
