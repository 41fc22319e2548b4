"""Tokenize jsonl(.zst) documents with a domain field into per-domain megatron-core ``.bin/.idx``.

Output layout (read by ``neox.data.open_domains``)::

    DIR/manifest.json                 tokenizer, tool version, per split and domain: documents, tokens
    DIR/<split>/<file>.bin, .idx      one IndexedDataset per domain; <file> is the sanitised name

Every document is its tokens followed by the end-of-document token. The run writes into a temporary
sibling ``DIR.tmp-<host>-<pid>-XXXX`` and renames it to ``DIR`` only when everything is complete, so an
interrupted run never leaves files that look finished; a later run removes such leftovers once their
owner process is gone (never those of a run still going). The manifest records the largest token id of
every file (``token_ids_verified``), checked below the tokenizer's vocabulary as the files are written,
so that training start-up never reads token files to check them; ``--verify DIR`` rechecks a directory
by reading every file. Records skipped by ``--skip-bad`` are listed in ``DIR/rejects.txt``.

Workers tokenize chunks of lines; ``imap`` returns them in input order and one process writes, so the
output is identical for any number of workers.
"""

from __future__ import annotations

import dataclasses
import glob
import io
import json
import multiprocessing
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from typing import Iterator

import numpy as np

from neox.data.indexed import (MANIFEST_FILE, MANIFEST_FORMAT, MANIFEST_FORMAT_VERSION, DataFileError,
                               check_layout, open_indexed_dataset, read_manifest,
                               recorded_max_token_id, scan_token_ids)
from neox.data.tokenizer import EOD_TOKEN
from neox.files import atomic_write_text, file_sha256
from neox.permissions import respect_umask

TOOL_VERSION = "1.1"
REJECTS_FILE = "rejects.txt"
SPLITS = ("train", "val")
# megatron-core stores uint16 when the vocabulary fits; its own tools switch at 65500.
_UINT16_VOCAB_LIMIT = 65500


class PreprocessError(ValueError):
    """Bad input, tokenizer or output location; the message names it and the fix."""


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    inputs: tuple[str, ...]            # corpus directories and/or .jsonl / .jsonl.zst files
    output_dir: str
    tokenizer_path: str
    domain_key: str = "domain"         # dotted path into each record, e.g. "meta.pile_set_name"
    text_key: str = "text"
    split: str = "train"               # split of the .jsonl inputs (corpus dirs carry their own)
    val_inputs: tuple[str, ...] = ()   # extra .jsonl(.zst) files for split "val"
    workers: int = 1
    skip_bad: bool = False
    overwrite: bool = False
    chunk_lines: int = 1024
    eod_token: str = EOD_TOKEN
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.inputs and not self.val_inputs:
            raise PreprocessError("no --input given")
        if self.workers < 1:
            raise PreprocessError(f"--workers must be >= 1, got {self.workers}")
        if self.chunk_lines < 1:
            raise PreprocessError(f"chunk_lines must be >= 1, got {self.chunk_lines}")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.split):
            raise PreprocessError(f"--split must be a plain name like 'train', got {self.split!r}")


# --- tokenizer --------------------------------------------------------------------------------------

def _load_tokenizer(path: str):
    from tokenizers import Tokenizer

    if not os.path.isfile(path):
        raise PreprocessError(f"tokenizer file {path} not found; pass --tokenizer PATH/tokenizer.json")
    try:
        return Tokenizer.from_file(path)
    except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
        raise PreprocessError(
            f"{path} is not a valid HF tokenizers file (tokenizer.json): {exc}"
        ) from exc


def tokenizer_info(path: str, eod_token: str = EOD_TOKEN) -> dict:
    """name, path, vocab_size, eod_id, sha256 of a ``tokenizer.json``; validates it loads."""
    tok = _load_tokenizer(path)
    eod_id = tok.token_to_id(eod_token)
    if eod_id is None:
        raise PreprocessError(
            f"tokenizer {path} has no end-of-document token {eod_token!r}; pass --eod-token with its "
            "end-of-text token"
        )
    stem = os.path.splitext(os.path.basename(path))[0]
    name = os.path.basename(os.path.dirname(os.path.abspath(path))) if stem == "tokenizer" else stem
    return {
        "name": name,
        "path": os.path.abspath(path),
        "vocab_size": int(tok.get_vocab_size(with_added_tokens=True)),
        "eod_id": int(eod_id),
        "sha256": file_sha256(path),
    }


def token_dtype(vocab_size: int) -> type:
    return np.uint16 if vocab_size < _UINT16_VOCAB_LIMIT else np.int32


# --- domain names -------------------------------------------------------------------------------------

def sanitize_domain_name(name: str) -> str:
    """A file-name-safe form: "Pile-CC" stays, "Ubuntu IRC" -> "Ubuntu_IRC", "a/b" -> "a_b"."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    if safe.startswith("."):  # no hidden files, no "." or ".."
        safe = "_" + safe[1:]
    return safe or "_"


def assign_file_names(names: list[str]) -> dict[str, str]:
    """Sanitised, unique file names for sorted domain names (a collision gets a numeric suffix)."""
    files: dict[str, str] = {}
    taken: set[str] = set()
    for name in sorted(names):
        base = sanitize_domain_name(name)
        candidate, n = base, 2
        while candidate.lower() in taken:  # lower(): stay unique on case-insensitive file systems
            candidate, n = f"{base}-{n}", n + 1
        taken.add(candidate.lower())
        files[name] = candidate
    return files


# --- reading inputs -------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Source:
    path: str
    split: str
    domain: str | None = None  # the <domain> directory of a corpus directory; None for a bare file


def _is_jsonl(path: str) -> bool:
    return path.endswith(".jsonl") or path.endswith(".jsonl.zst")


def discover_sources(config: PreprocessConfig) -> list[_Source]:
    """Input files with their split, in a fixed order (directories sorted)."""
    sources: list[_Source] = []
    for split, paths in ((config.split, config.inputs), ("val", config.val_inputs)):
        for path in paths:
            if os.path.isdir(path):
                found = []
                for domain_dir in sorted(os.listdir(path)):
                    full = os.path.join(path, domain_dir)
                    if not os.path.isdir(full):
                        continue
                    for corpus_split in SPLITS:
                        for ext in (".jsonl", ".jsonl.zst"):
                            candidate = os.path.join(full, corpus_split + ext)
                            if os.path.isfile(candidate):
                                found.append(_Source(candidate, corpus_split, domain_dir))
                if not found:
                    raise PreprocessError(
                        f"{path} is a directory but holds no <domain>/{{train,val}}.jsonl[.zst] files"
                    )
                sources.extend(found)
            elif os.path.isfile(path):
                if not _is_jsonl(path):
                    raise PreprocessError(f"{path}: expected a .jsonl or .jsonl.zst file or a corpus directory")
                sources.append(_Source(path, split))
            else:
                raise PreprocessError(f"input {path} does not exist")
    return sources


class _CountingReader(io.RawIOBase):
    """Wraps a binary file to report bytes read from disk (for the progress bar under zstd)."""

    def __init__(self, fh) -> None:
        self._fh = fh
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self._fh.readinto(buffer)
        self.bytes_read += n or 0
        return n


def _open_lines(path: str, counter: _CountingReader) -> Iterator[bytes]:
    if path.endswith(".zst"):
        import zstandard

        stream = zstandard.ZstdDecompressor().stream_reader(counter, read_across_frames=True)
        yield from io.BufferedReader(stream, buffer_size=1 << 20)
    else:
        yield from io.BufferedReader(counter, buffer_size=1 << 20)


def _read_chunks(sources: list[_Source], chunk_lines: int) -> Iterator[tuple]:
    """(source id, first line number, lines, disk bytes consumed since the previous chunk, directory domain)."""
    for source_id, source in enumerate(sources):
        with open(source.path, "rb") as fh:
            counter = _CountingReader(fh)
            reported = 0
            lines: list[bytes] = []
            first = 1
            for line_no, line in enumerate(_open_lines(source.path, counter), start=1):
                if not lines:
                    first = line_no
                lines.append(line)
                if len(lines) == chunk_lines:
                    yield source_id, first, lines, counter.bytes_read - reported, source.domain
                    reported = counter.bytes_read
                    lines = []
            if lines:
                yield source_id, first, lines, counter.bytes_read - reported, source.domain


# --- tokenizing (runs in workers) --------------------------------------------------------------------

def _dig(record, dotted: str):
    value = record
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


@dataclasses.dataclass
class _ChunkResult:
    source_id: int
    domains: list[str]             # one per document, input order
    lengths: np.ndarray            # (n_docs,) tokens per document including the EOD token
    ids: np.ndarray                # (sum(lengths),) all documents back to back
    bad: list[tuple[int, str]]     # (line number, reason)
    text_bytes: int                # uncompressed input bytes of this chunk
    disk_bytes: int


def _tokenize_chunk(tokenizer, chunk, domain_key: str, text_key: str, eod_id: int, dtype) -> _ChunkResult:
    source_id, first_line, lines, disk_bytes, dir_domain = chunk
    texts: list[str] = []
    domains: list[str] = []
    bad: list[tuple[int, str]] = []
    text_bytes = 0
    for offset, raw in enumerate(lines):
        text_bytes += len(raw)
        if not raw.strip():
            continue  # blank lines (e.g. a trailing newline) are not records
        line_no = first_line + offset
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            bad.append((line_no, f"malformed JSON ({exc})"))
            continue
        text = _dig(record, text_key)
        domain = _dig(record, domain_key)
        if dir_domain is not None and domain is None:
            domain = dir_domain  # DIR/<domain>/train.jsonl: the directory names the domain
        if not isinstance(text, str):
            bad.append((line_no, f"record has no string field {text_key!r}"))
        elif not isinstance(domain, str):
            bad.append((line_no, f"record has no string domain field {domain_key!r}"))
        elif not domain.strip():
            bad.append((line_no, f"record has an empty domain under {domain_key!r}"))
        elif dir_domain is not None and sanitize_domain_name(domain) != dir_domain:
            # The directory holds the domain's file-name form ("Ubuntu IRC" lives in Ubuntu_IRC/).
            bad.append((line_no, f"record has domain {domain!r} under {domain_key!r} but lies in the "
                                 f"directory of domain {dir_domain!r}"))
        else:
            texts.append(text)
            domains.append(domain)
    encodings = tokenizer.encode_batch(texts, add_special_tokens=False) if texts else []
    lengths = np.fromiter((len(e.ids) + 1 for e in encodings), dtype=np.int64, count=len(encodings))
    ids = np.empty(int(lengths.sum()), dtype=dtype)
    pos = 0
    for enc, n in zip(encodings, lengths.tolist()):
        ids[pos : pos + n - 1] = enc.ids
        ids[pos + n - 1] = eod_id
        pos += n
    return _ChunkResult(source_id, domains, lengths, ids, bad, text_bytes, disk_bytes)


_WORKER_STATE: dict = {}  # per pool worker process: the tokenizer is loaded once, not per chunk


def _init_worker(tokenizer_path: str, domain_key: str, text_key: str, eod_id: int, dtype) -> None:
    # Each worker is already one of N processes; the tokenizer's own thread pool would oversubscribe.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER_STATE.update(tokenizer=_load_tokenizer(tokenizer_path), domain_key=domain_key,
                         text_key=text_key, eod_id=eod_id, dtype=dtype)


def _worker_tokenize(chunk) -> _ChunkResult:
    s = _WORKER_STATE
    return _tokenize_chunk(s["tokenizer"], chunk, s["domain_key"], s["text_key"], s["eod_id"], s["dtype"])


# --- writing -----------------------------------------------------------------------------------------

def _prepare_output(output_dir: str, overwrite: bool) -> str:
    output_dir = os.path.abspath(output_dir)
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not overwrite:
        raise PreprocessError(f"output directory {output_dir} exists and is not empty; pass --overwrite "
                              "to replace it or choose another --output-dir")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise PreprocessError(f"--output-dir {output_dir} exists and is not a directory")
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    # A run killed before its rename (SIGKILL, OOM) leaves OUT.tmp-* (or OUT.old-*) behind: clear those,
    # but not the ones of a run writing the same output right now (they name a live owner).
    base = os.path.basename(output_dir)
    for leftover in sorted(glob.glob(os.path.join(glob.escape(parent), glob.escape(base) + ".tmp-*")) +
                           glob.glob(os.path.join(glob.escape(parent), glob.escape(base) + ".old-*"))):
        owner = _live_owner(os.path.basename(leftover)[len(base):])
        if owner is not None:
            print(f"left {leftover} alone: it belongs to {owner}, which may still be running", file=sys.stderr)
            continue
        shutil.rmtree(leftover, ignore_errors=True)
        print(f"removed {leftover} (left by an interrupted run)", file=sys.stderr)
    return tempfile.mkdtemp(prefix=base + _owned_tag(".tmp"), dir=parent)


# ".tmp-<host>-<pid>-<mkdtemp suffix>": mkdtemp's suffix has no "-", a host name may.
_OWNED = re.compile(r"\.(?:tmp|old)-(?P<host>.+)-(?P<pid>\d+)-[^-]+")


def _owned_tag(kind: str) -> str:
    """The prefix of a temporary directory that names the process owning it."""
    return f"{kind}-{socket.gethostname()}-{os.getpid()}-"


def _live_owner(suffix: str) -> str | None:
    """The owner ("pid N", "pid N on HOST") when the directory with this name suffix may belong to a live run.

    A directory of another host is kept (its pid means nothing here); one without an owner in its name
    was made before owners were recorded and counts as a leftover.
    """
    match = _OWNED.fullmatch(suffix)
    if match is None:
        return None
    host, pid = match["host"], int(match["pid"])
    if host != socket.gethostname():
        return f"pid {pid} on {host}"
    if pid == os.getpid():
        return None  # our own earlier attempt in this process (it has failed and cleaned up, or is garbage)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # exists, owned by another user
    return f"pid {pid}"


def _publish(tmp_dir: str, output_dir: str) -> None:
    """Replace ``output_dir`` by the finished ``tmp_dir`` (renames only, on one file system)."""
    output_dir = os.path.abspath(output_dir)
    respect_umask(tmp_dir)  # mkdtemp made it 0700: the published directory gets the modes the umask allows
    old = None
    if os.path.exists(output_dir):
        old = tempfile.mkdtemp(prefix=os.path.basename(output_dir) + _owned_tag(".old"),
                               dir=os.path.dirname(output_dir))
        os.rmdir(old)
        os.replace(output_dir, old)
    os.replace(tmp_dir, output_dir)
    if old is not None:
        shutil.rmtree(old)


def write_manifest(out_dir: str, tokenizer: dict, dtype, stats: dict[str, dict[str, dict]],
                   files: dict[str, str], tool: str) -> dict:
    """``manifest.json``: domains in sorted order, per split and domain documents and tokens.

    When every stats entry has ``max_token_id`` (the writer saw every id it wrote and checked them
    in ``[0, vocab_size)``), the manifest records ``token_ids_verified`` with the tokenizer's sha256,
    and start-up trusts those numbers instead of reading the files.
    """
    manifest = {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_FORMAT_VERSION,
        "tool": tool,
        "tool_version": TOOL_VERSION,
        "tokenizer": tokenizer,
        "dtype": np.dtype(dtype).name,
        "domains": [{"name": name, "file": files[name]} for name in sorted(files)],
        "splits": {
            split: {name: stats[split][name] for name in sorted(stats[split])} for split in sorted(stats)
        },
    }
    entries = [entry for split in stats.values() for entry in split.values()]
    if entries and all("max_token_id" in entry for entry in entries):
        manifest["token_ids_verified"] = _verification_record(tokenizer, tool)
    _write_manifest_file(out_dir, manifest)
    return manifest


def _verification_record(tokenizer: dict, by: str) -> dict:
    return {"below_vocab_size": tokenizer["vocab_size"], "tokenizer_sha256": tokenizer.get("sha256"),
            "by": by, "tool_version": TOOL_VERSION}


def _write_manifest_file(out_dir: str, manifest: dict) -> None:
    atomic_write_text(os.path.join(out_dir, MANIFEST_FILE), json.dumps(manifest, indent=2, sort_keys=False) + "\n")


class _DomainWriters:
    """One IndexedDatasetBuilder per (split, domain), created on first use under a provisional name."""

    def __init__(self, out_dir: str, dtype, vocab_size: int) -> None:
        from neox.data.indexed import megatron_indexed_dataset

        self._builder_cls = megatron_indexed_dataset().IndexedDatasetBuilder
        self.out_dir = out_dir
        self.dtype = dtype
        self.vocab_size = vocab_size
        self.builders: dict[tuple[str, str], object] = {}
        self.prefixes: dict[tuple[str, str], str] = {}
        self.stats: dict[str, dict[str, dict]] = {}

    def add(self, split: str, domain: str, ids: np.ndarray) -> None:
        key = (split, domain)
        builder = self.builders.get(key)
        if builder is None:
            os.makedirs(os.path.join(self.out_dir, split), exist_ok=True)
            prefix = os.path.join(self.out_dir, split, f"_domain{len(self.builders)}")
            builder = self._builder_cls(prefix + ".bin", dtype=self.dtype)
            self.builders[key], self.prefixes[key] = builder, prefix
            self.stats.setdefault(split, {})[domain] = {"documents": 0, "tokens": 0, "max_token_id": -1}
        # The ids checked here are the bytes written: the manifest's record lets start-up skip reading them.
        largest = int(ids.max()) if ids.size else -1
        if largest >= self.vocab_size or (ids.size and int(ids.min()) < 0):
            raise PreprocessError(f"the tokenizer produced an id outside [0, {self.vocab_size}) for domain "
                                  f"{domain!r}; its vocab_size is wrong; fix or replace the tokenizer file")
        builder.add_document(ids, [int(ids.shape[0])])
        entry = self.stats[split][domain]
        entry["documents"] += 1
        entry["tokens"] += int(ids.shape[0])
        entry["max_token_id"] = max(entry["max_token_id"], largest)

    def finalize(self) -> dict[str, str]:
        """Write the indices and move every pair to its sanitised name; returns name -> file."""
        files = assign_file_names(sorted({domain for _, domain in self.builders}))
        for key, builder in self.builders.items():
            split, domain = key
            prefix = self.prefixes[key]
            builder.finalize(prefix + ".idx")
            final = os.path.join(self.out_dir, split, files[domain])
            os.replace(prefix + ".bin", final + ".bin")
            os.replace(prefix + ".idx", final + ".idx")
        return files


def preprocess(config: PreprocessConfig) -> dict:
    """Run the whole conversion; returns the manifest plus a ``summary`` dict (not written)."""
    info = tokenizer_info(config.tokenizer_path, config.eod_token)
    dtype = token_dtype(info["vocab_size"])
    sources = discover_sources(config)
    tmp_dir = _prepare_output(config.output_dir, config.overwrite)
    started = time.perf_counter()
    bad_count = 0
    text_bytes = 0
    docs_per_source = [0] * len(sources)
    try:
        writers = _DomainWriters(tmp_dir, dtype, info["vocab_size"])
        rejects = None
        chunks = _read_chunks(sources, config.chunk_lines)
        pool = None
        if config.workers > 1:
            # fork: workers inherit the imported modules (megatron's import alone takes seconds).
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            pool = multiprocessing.get_context(method).Pool(
                config.workers, initializer=_init_worker,
                initargs=(config.tokenizer_path, config.domain_key, config.text_key, info["eod_id"], dtype),
            )
            results = pool.imap(_worker_tokenize, chunks, chunksize=1)
        else:
            tokenizer = _load_tokenizer(config.tokenizer_path)
            results = (_tokenize_chunk(tokenizer, c, config.domain_key, config.text_key, info["eod_id"], dtype)
                       for c in chunks)
        from tqdm import tqdm

        total_disk = sum(os.path.getsize(s.path) for s in sources)
        bar = tqdm(total=total_disk, unit="B", unit_scale=True, desc="preprocess",
                   disable=not config.progress, file=sys.stderr)
        try:
            for result in results:
                source = sources[result.source_id]
                if result.bad:
                    if not config.skip_bad:
                        line_no, reason = result.bad[0]
                        raise PreprocessError(f"{source.path}:{line_no}: {reason}; fix the input or pass "
                                              "--skip-bad to skip such records")
                    bad_count += len(result.bad)
                    if rejects is None:
                        rejects = open(os.path.join(tmp_dir, REJECTS_FILE), "w")
                    rejects.writelines(f"{source.path}:{line_no}\t{reason}\n" for line_no, reason in result.bad)
                text_bytes += result.text_bytes
                docs_per_source[result.source_id] += len(result.domains)
                ends = np.cumsum(result.lengths)
                starts = ends - result.lengths
                for domain, lo, hi in zip(result.domains, starts.tolist(), ends.tolist()):
                    writers.add(source.split, domain, result.ids[lo:hi])
                bar.update(result.disk_bytes)
        finally:
            bar.close()
            if rejects is not None:
                rejects.close()
            if pool is not None:
                pool.terminate()
                pool.join()
        empty = [s.path for s, n in zip(sources, docs_per_source) if n == 0]
        if empty:
            raise PreprocessError(f"input file(s) {empty} contain no usable documents")
        files = writers.finalize()
        manifest = write_manifest(tmp_dir, info, dtype, writers.stats, files, tool="tools/preprocess_data.py")
        _publish(tmp_dir, config.output_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    seconds = time.perf_counter() - started
    tokens = sum(e["tokens"] for split in writers.stats.values() for e in split.values())
    documents = sum(e["documents"] for split in writers.stats.values() for e in split.values())
    manifest["summary"] = {
        "documents": documents, "tokens": tokens, "bad_records_skipped": bad_count,
        "rejects_file": os.path.join(os.path.abspath(config.output_dir), REJECTS_FILE) if bad_count else None,
        "input_megabytes": text_bytes / 1e6, "seconds": seconds,
        "megabytes_per_second": text_bytes / 1e6 / max(seconds, 1e-9),
        "tokens_per_second": tokens / max(seconds, 1e-9),
    }
    return manifest


# --- rechecking a written directory -------------------------------------------------------------------

def verify_token_dir(data_dir: str, record: bool = True, progress: bool = False) -> dict:
    """Read every token file of ``data_dir`` and check it against its manifest.

    Checks each ``.idx`` (sequences back to back, token count as in the manifest) and every token id
    in ``[0, tokenizer vocab_size)``; where the manifest records a file's largest id, the file must
    still have it. Raises ``PreprocessError`` naming the first bad file. With ``record``, a manifest
    that lacks the verification record (made before it existed) gets it, so that start-up stops
    reading the files. Returns ``{"files", "tokens", "max_token_id", "recorded"}``.
    """
    try:
        manifest = read_manifest(data_dir)
    except DataFileError as exc:
        raise PreprocessError(f"--verify {data_dir}: {exc}") from exc
    manifest_path = os.path.join(data_dir, MANIFEST_FILE)
    vocab_size = manifest["tokenizer"].get("vocab_size")
    if not isinstance(vocab_size, int) or vocab_size < 1:
        raise PreprocessError(f"{manifest_path}: tokenizer.vocab_size is {vocab_size!r}, not a positive integer; "
                              "re-run tools/preprocess_data.py")
    file_of = {d["name"]: d["file"] for d in manifest["domains"]}
    jobs = [(split, name, os.path.join(data_dir, split, file_of.get(name, name)))
            for split in sorted(manifest["splits"]) for name in sorted(manifest["splits"][split])]
    from tqdm import tqdm

    total_bytes = sum(os.path.getsize(prefix + ".bin") for _, _, prefix in jobs if os.path.exists(prefix + ".bin"))
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="verify", disable=not progress, file=sys.stderr)
    needs_record = any(recorded_max_token_id(manifest, split, name) is None for split, name, _ in jobs)
    tokens, largest = 0, -1
    try:
        for split, name, prefix in jobs:
            entry = manifest["splits"][split][name]
            try:
                index = open_indexed_dataset(prefix).index
                num_tokens = check_layout(prefix, index)
                if num_tokens != entry.get("tokens"):
                    raise DataFileError(f"{prefix}.bin holds {num_tokens} tokens but {manifest_path} records "
                                        f"{entry.get('tokens')}; the files changed after preprocessing")
                max_id = scan_token_ids(prefix + ".bin", index.dtype, vocab_size)
            except DataFileError as exc:
                raise PreprocessError(f"{exc}; re-run tools/preprocess_data.py for this directory") from exc
            recorded = entry.get("max_token_id")
            if recorded is not None and recorded != max_id:
                raise PreprocessError(f"{prefix}.bin: its largest token id is {max_id} but {manifest_path} "
                                      f"records {recorded}; the file changed after preprocessing; re-run "
                                      "tools/preprocess_data.py for this directory")
            entry["max_token_id"] = max_id
            tokens += num_tokens
            largest = max(largest, max_id)
            bar.update(os.path.getsize(prefix + ".bin"))
    finally:
        bar.close()
    recorded_now = False
    if record and needs_record:
        manifest["token_ids_verified"] = _verification_record(manifest["tokenizer"],
                                                              "tools/preprocess_data.py --verify")
        try:
            _write_manifest_file(data_dir, manifest)
            recorded_now = True
        except OSError as exc:
            print(f"note: could not record the verification in {manifest_path} ({exc}); start-up will keep "
                  "reading the token files", file=sys.stderr)
    return {"files": len(jobs), "tokens": tokens, "max_token_id": largest, "vocab_size": vocab_size,
            "recorded": recorded_now}


# --- command line --------------------------------------------------------------------------------------

def build_arg_parser():
    import argparse

    p = argparse.ArgumentParser(
        prog="preprocess_data.py",
        description="Tokenize jsonl(.zst) documents into per-domain megatron-core .bin/.idx files.",
    )
    p.add_argument("--input", nargs="+", metavar="PATH",
                   help="corpus directories (<domain>/{train,val}.jsonl[.zst]; records without the domain "
                        "field take the directory's) and/or .jsonl[.zst] files")
    p.add_argument("--output-dir")
    p.add_argument("--tokenizer", help="HF tokenizers file (tokenizer.json)")
    p.add_argument("--verify", metavar="DIR",
                   help="instead of preprocessing: read every token file of DIR and check it against its "
                        "manifest (ids below the vocabulary, index layout, token counts); records the "
                        "check in a manifest that lacks it")
    p.add_argument("--domain-key", default="domain", help="dotted key of the domain, e.g. meta.pile_set_name")
    p.add_argument("--text-key", default="text")
    p.add_argument("--split", default="train", help="split of the .jsonl inputs (default train)")
    p.add_argument("--val-input", nargs="*", default=[], metavar="PATH", help=".jsonl[.zst] files for split val")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--chunk-lines", type=int, default=1024, help="lines per work unit")
    p.add_argument("--eod-token", default=EOD_TOKEN)
    p.add_argument("--skip-bad", action="store_true",
                   help=f"skip malformed records; they are listed (file:line, reason) in OUT/{REJECTS_FILE}")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_arg_parser()
    args = parser.parse_args(argv)
    if args.verify is not None:
        return _main_verify(args.verify, progress=not args.quiet)
    missing = [flag for flag, value in (("--input", args.input), ("--output-dir", args.output_dir),
                                        ("--tokenizer", args.tokenizer)) if not value]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)} (or pass --verify DIR)")
    try:
        config = PreprocessConfig(
            inputs=tuple(args.input), output_dir=args.output_dir, tokenizer_path=args.tokenizer,
            domain_key=args.domain_key, text_key=args.text_key, split=args.split,
            val_inputs=tuple(args.val_input), workers=args.workers, skip_bad=args.skip_bad,
            overwrite=args.overwrite, chunk_lines=args.chunk_lines, eod_token=args.eod_token,
            progress=not args.quiet,
        )
        manifest = preprocess(config)
    except PreprocessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    s = manifest["summary"]
    for split, domains in manifest["splits"].items():
        for name, entry in domains.items():
            print(f"{split:>5} {name:<30} {entry['documents']:>10} docs {entry['tokens']:>14} tokens")
    if s["bad_records_skipped"]:
        print(f"skipped {s['bad_records_skipped']} bad record(s) (--skip-bad), listed in {s['rejects_file']}")
    print(f"wrote {s['documents']} documents, {s['tokens']} tokens to {os.path.abspath(config.output_dir)} "
          f"in {s['seconds']:.1f} s: {s['megabytes_per_second']:.2f} MB/s, "
          f"{s['tokens_per_second']:.0f} tokens/s")
    return 0


def _main_verify(data_dir: str, progress: bool) -> int:
    try:
        result = verify_token_dir(data_dir, record=True, progress=progress)
    except PreprocessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    note = "; recorded in its manifest" if result["recorded"] else ""
    print(f"verified {os.path.abspath(data_dir)}: {result['files']} files, {result['tokens']} tokens, every id in "
          f"[0, {result['vocab_size']}) (largest {result['max_token_id']}){note}")
    return 0
