#!/usr/bin/env python
"""Data-path start-up time and peak memory against corpus size (should not grow with it).

    python benchmarks/startup.py [--sizes-gb 1 5] [--dir /tmp/acodm-startup] [--repeats 3] [--keep]

Builds synthetic corpora with the Pile's 22 domains (sized by its natural weights, ~1000-token
documents, a 1% validation split) holding ``--sizes-gb`` GB of token files each, written with the
project's writer (megatron-core's ``IndexedDatasetBuilder`` and ``neox.data.preprocess.write_manifest``).
Then, in a fresh Python process per measurement, it runs what ``Trainer.__init__`` runs on the data for
``configs/pythia_160m.yml``: ``read_manifest``, ``open_domains`` for the train and val splits (with the
model's vocab_size, so the token-id check is made), ``ValidationSet``, ``MixturePlan``,
``MicroBatchLoader``, ``set_weights``. The child reports the wall time of that path (imports excluded:
they do not depend on the corpus) and its peak RSS (``resource.getrusage``), then the same after the first
global batch (which builds each domain's epoch permutation, O(tokens / seq_len)). Sizes are measured
interleaved; the table shows the best time and the median RSS of ``--repeats`` processes.

Rows marked "unverified" open a copy of the manifest without the ``token_ids_verified`` record (what a
manifest written before it existed looks like): start-up then reads every token file, as it used to.

The last line, ``result: time_ratio_5g_1g=R rss_ratio_5g_1g=R``, compares start-up of the largest and the
smallest corpus (verified manifests); both near 1 mean start-up does not grow with the corpus.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout

CONFIG = os.path.join(ROOT, "configs", "pythia_160m.yml")
MEAN_DOC_TOKENS = 1024
VAL_FRACTION = 0.01


# --- building the corpora ----------------------------------------------------------------------------

def build_corpus(out_dir: str, total_bytes: int, vocab_size: int | None = None, seed: int = 0) -> dict:
    """22 Pile domains of random tokens, ``total_bytes`` of uint16 token files in all. Returns the manifest."""
    import numpy as np

    from neox.config import read_yaml_with_includes
    from neox.data.indexed import megatron_indexed_dataset, scan_token_ids
    from neox.data.preprocess import assign_file_names, token_dtype, write_manifest

    builder_cls = megatron_indexed_dataset().IndexedDatasetBuilder
    if vocab_size is None:
        vocab_size = read_yaml_with_includes(CONFIG)["model"]["vocab_size"]
    weights = read_yaml_with_includes(CONFIG)["data"]["reference_weights"]
    names = sorted(weights)
    files = assign_file_names(names)
    dtype = token_dtype(vocab_size)
    total_tokens = total_bytes // np.dtype(dtype).itemsize
    rng = np.random.default_rng(seed)
    # One random block reused by slices: the content does not matter to start-up, the writing speed does.
    block = rng.integers(1, vocab_size, size=1 << 24, dtype=dtype)
    eod_id = 0
    stats: dict[str, dict[str, dict]] = {"train": {}, "val": {}}
    shutil.rmtree(out_dir, ignore_errors=True)
    for split in stats:
        os.makedirs(os.path.join(out_dir, split))
    mass = sum(weights.values())
    for name in names:
        domain_tokens = max(int(total_tokens * weights[name] / mass), 4 * MEAN_DOC_TOKENS)
        for split, share in (("train", 1 - VAL_FRACTION), ("val", VAL_FRACTION)):
            want = max(int(domain_tokens * share), 4 * MEAN_DOC_TOKENS)
            lengths = rng.integers(MEAN_DOC_TOKENS // 2, 3 * MEAN_DOC_TOKENS // 2, size=want // MEAN_DOC_TOKENS + 1)
            prefix = os.path.join(out_dir, split, files[name])
            builder = builder_cls(prefix + ".bin", dtype=dtype)
            pos = 0
            for n in lengths.tolist():
                if pos + n > block.size:
                    pos = 0
                doc = block[pos : pos + n].copy()
                doc[-1] = eod_id
                builder.add_document(doc, [n])
                pos += n
            builder.finalize(prefix + ".idx")
            # What preprocessing records: the largest id written (read back here; the page cache has it).
            stats[split][name] = {"documents": int(lengths.size), "tokens": int(lengths.sum()),
                                  "max_token_id": scan_token_ids(prefix + ".bin", dtype, vocab_size)}
    tokenizer = {"name": "synthetic", "path": None, "vocab_size": int(vocab_size), "eod_id": eod_id, "sha256": None}
    return write_manifest(out_dir, tokenizer, dtype, stats, files, tool="benchmarks/startup.py")


def unverified_copy(data_dir: str, out_dir: str) -> None:
    """``out_dir``: the same token files (symlinked) under a manifest without the verification record."""
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    with open(os.path.join(data_dir, "manifest.json")) as fh:
        manifest = json.load(fh)
    manifest.pop("token_ids_verified")
    for split in manifest["splits"].values():
        for entry in split.values():
            entry.pop("max_token_id", None)
    for split in manifest["splits"]:
        os.symlink(os.path.join(os.path.abspath(data_dir), split), os.path.join(out_dir, split))
    with open(os.path.join(out_dir, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=2)


def corpus_bytes(data_dir: str) -> tuple[int, int, int]:
    """(.bin bytes, .idx bytes, documents) of a corpus directory."""
    with open(os.path.join(data_dir, "manifest.json")) as fh:
        manifest = json.load(fh)
    bin_bytes = idx_bytes = 0
    for split in manifest["splits"]:
        for name in os.listdir(os.path.join(data_dir, split)):
            size = os.path.getsize(os.path.join(data_dir, split, name))
            if name.endswith(".bin"):
                bin_bytes += size
            else:
                idx_bytes += size
    documents = sum(e["documents"] for split in manifest["splits"].values() for e in split.values())
    return bin_bytes, idx_bytes, documents


# --- one measurement (runs in a fresh process) -----------------------------------------------------------

def child(data_dir: str) -> None:
    import resource

    import numpy as np

    from neox.config import load_config
    from neox.data import MicroBatchLoader, MixturePlan, ValidationSet, open_domains, read_manifest
    from neox.data.indexed import megatron_indexed_dataset

    megatron_indexed_dataset()  # its import (seconds, the same for any corpus) is not start-up of the data

    def peak_rss_mb() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB

    cfg = load_config(CONFIG, [f"data.path={data_dir}", "data.tokenizer=null"])
    data = cfg.data
    # The imports peak above anything the data path allocates (torch); restart the peak from what is
    # resident now (Linux: "5" > clear_refs resets the high-water mark getrusage reports), so that the
    # peak measured is that of the data path on top of the imported modules.
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        peak_reset = True
    except OSError:
        peak_reset = False
    rss_imports = peak_rss_mb()
    start = time.perf_counter()
    # The data path of Trainer.__init__ (neox/training/trainer.py), in its order, with its arguments.
    opened = dict(seq_len_tokens=data.seq_len_tokens, seed=cfg.seed, vocab_size=cfg.model.vocab_size,
                  expected_tokenizer_sha256=None)
    train_domains = data.domains or list(read_manifest(data.path)["splits"].get(data.train_split, {})) or None
    corpus = open_domains(data.path, split=data.train_split, domains=train_domains, **opened)
    val_corpus = open_domains(data.path, split=data.val_split, domains=list(corpus.names), **opened)
    ValidationSet(val_corpus, samples_per_domain=cfg.eval.val_samples_per_domain,
                  micro_batch_sequences=cfg.eval.micro_batch_sequences or data.micro_batch_sequences)
    plan = MixturePlan(samples_per_epoch=[ds.num_samples for ds in corpus.datasets],
                       global_batch_sequences=data.global_batch_sequences, seed=cfg.seed,
                       min_samples_per_domain=data.min_samples_per_domain)
    loader = MicroBatchLoader(corpus, plan, dp_rank=0, dp_size=1, micro_batch_sequences=data.micro_batch_sequences)
    plan.set_weights(np.full(corpus.num_domains, 1.0 / corpus.num_domains))
    startup_s = time.perf_counter() - start
    rss_startup = peak_rss_mb()
    loader.next_step()
    first_batch_s = time.perf_counter() - start
    print(json.dumps({"startup_s": startup_s, "rss_imports_mb": rss_imports, "rss_startup_mb": rss_startup,
                      "first_batch_s": first_batch_s, "rss_first_batch_mb": peak_rss_mb(),
                      "peak_reset": peak_reset}))


def measure(data_dir: str) -> dict:
    result = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", data_dir],
                            capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"measurement on {data_dir} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- the table ---------------------------------------------------------------------------------------------

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes-gb", type=float, nargs="+", default=[1.0, 5.0],
                   help="GB (1e9 bytes) of token files per corpus; the result line compares the last with the first")
    p.add_argument("--dir", default=None, help="where to build the corpora (default: a new directory in /tmp)")
    p.add_argument("--repeats", type=int, default=3, help="measurements per corpus (median reported)")
    p.add_argument("--no-unverified", action="store_true", help="skip the rows that read every token file")
    p.add_argument("--keep", action="store_true", help="keep the corpora (reused by a later run with --dir)")
    p.add_argument("--child", metavar="DATA_DIR", help=argparse.SUPPRESS)
    p.add_argument("--build", nargs=2, metavar=("DATA_DIR", "BYTES"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child)
        return
    if args.build:
        build_corpus(args.build[0], int(args.build[1]))
        return
    if args.repeats < 1 or len(args.sizes_gb) < 2 or min(args.sizes_gb) <= 0:
        print("error: need --repeats >= 1 and at least two positive --sizes-gb, e.g. --sizes-gb 1 5", file=sys.stderr)
        sys.exit(2)

    # This process stays small (no neox, no torch, corpora built in a child): a child inherits its parent's
    # peak RSS as the floor of its own getrusage peak at exec.
    root = args.dir or tempfile.mkdtemp(prefix="acodm-startup-")
    os.makedirs(root, exist_ok=True)
    labels = [f"{g:g}g" for g in args.sizes_gb]
    dirs = {}
    try:
        for label, gb in zip(labels, args.sizes_gb):
            data_dir = os.path.join(root, f"corpus_{label}")
            if os.path.exists(os.path.join(data_dir, "manifest.json")) and \
                    abs(corpus_bytes(data_dir)[0] - gb * 1e9) < 0.02 * gb * 1e9:
                print(f"reusing {data_dir}", file=sys.stderr)
            else:
                started = time.perf_counter()
                subprocess.run([sys.executable, os.path.abspath(__file__), "--build", data_dir, str(int(gb * 1e9))],
                               check=True, stdout=subprocess.DEVNULL)
                print(f"built {data_dir} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
            dirs[label] = data_dir
            if not args.no_unverified:
                unverified_copy(data_dir, data_dir + "_unverified")

        rows = {label: [] for label in labels}
        for repeat in range(args.repeats):  # interleaved, order alternating: load changes hit every size alike
            for label in labels if repeat % 2 == 0 else labels[::-1]:
                rows[label].append(measure(dirs[label]))
        unverified = {label: measure(dirs[label] + "_unverified") for label in labels} if not args.no_unverified else {}

        print(f"data-path start-up, configs/pythia_160m.yml (seq {1024}, batch 1152), 22 Pile domains, "
              f"{args.repeats} fresh processes each: best time, median RSS")
        if not all(r["peak_reset"] for runs in rows.values() for r in runs):
            print("note: /proc/self/clear_refs is not writable here: peak RSS includes the imports' peak")
        print("peak RSS: getrusage in the child, peak since the imports (RSS then: 'base'); +1st batch: the "
              "same through the first global batch")
        header = (f"{'corpus':<16}{'bin GB':>8}{'idx MB':>8}{'docs':>10}{'start-up s':>12}{'peak RSS MB':>13}"
                  f"{'base MB':>9}{'+1st batch s':>14}{'peak MB':>9}")
        print(header)
        # Time: best of the repeats (the machine's other load only ever adds to it); RSS: the median.
        med = {label: {key: (min if key.endswith("_s") else statistics.median)(r[key] for r in rows[label])
                       for key in rows[label][0] if key != "peak_reset"} for label in labels}
        for kind, results in (("verified", med), ("unverified", unverified)):
            for label, m in results.items():
                bin_bytes, idx_bytes, docs = corpus_bytes(dirs[label])
                print(f"{label + ' ' + kind:<16}{bin_bytes / 1e9:>8.2f}{idx_bytes / 1e6:>8.1f}{docs:>10}"
                      f"{m['startup_s']:>12.3f}{m['rss_startup_mb']:>13.1f}{m['rss_imports_mb']:>9.1f}"
                      f"{m['first_batch_s']:>14.3f}{m['rss_first_batch_mb']:>9.1f}")
        big, small = labels[-1], labels[0]
        if unverified:
            u_big, u_small = unverified[big], unverified[small]
            print(f"unverified (reads every token file): time_ratio_{big}_{small}="
                  f"{u_big['startup_s'] / u_small['startup_s']:.2f} "
                  f"rss_ratio_{big}_{small}={u_big['rss_startup_mb'] / u_small['rss_startup_mb']:.2f}")
        time_ratio = med[big]["startup_s"] / med[small]["startup_s"]
        rss_ratio = med[big]["rss_startup_mb"] / med[small]["rss_startup_mb"]
        print(f"result: time_ratio_{big}_{small}={time_ratio:.2f} rss_ratio_{big}_{small}={rss_ratio:.2f}")
    finally:
        if not args.keep:
            for label in labels:
                for path in (os.path.join(root, f"corpus_{label}"), os.path.join(root, f"corpus_{label}_unverified")):
                    shutil.rmtree(path, ignore_errors=True)
            if args.dir is None:
                shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
