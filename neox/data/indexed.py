"""Per-domain token datasets over megatron-core ``.bin/.idx`` files.

A domain is one ``IndexedDataset``. Its documents (each already ending in the end-of-document token
when written by ``tools/preprocess_data.py``) are concatenated in file order and cut into windows of
``seq_len_tokens + 1`` tokens with stride ``seq_len_tokens``, exactly like Megatron's ``GPTDataset``
with ``add_extra_token_to_sequence``: consecutive windows share one token so that every token is a
prediction target once per epoch. The trailing partial window is dropped.

Because the ``.bin`` file is the concatenation itself, a window is a slice of the memory-mapped token
array: the "sample index" is the arithmetic ``start = j * seq_len_tokens`` and costs no memory. The
per-document arrays of the ``.idx`` stay memory-mapped and unread at start-up (only the first and last
entry are looked at), and no token file is read to check ids when the manifest records them verified.
The only per-domain array built is the per-epoch permutation of window ids (O(tokens / seq_len)),
made on the first batch that needs it and cached for the epoch in use.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections import OrderedDict

import numpy as np


class DataFileError(ValueError):
    """A token file or manifest on disk is missing, inconsistent, or does not fit the model."""


def megatron_indexed_dataset():
    """megatron-core's ``indexed_dataset`` module. Imported late (megatron.core's package import takes
    seconds) and without the warnings about Transformer Engine / Apex kernels that it prints, which have
    nothing to do with reading or writing token files."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
        from megatron.core.datasets import indexed_dataset
    return indexed_dataset


def open_indexed_dataset(path_prefix: str):
    """Open ``PREFIX.idx``/``PREFIX.bin`` with megatron-core, with errors that name the missing file."""
    idx_path, bin_path = path_prefix + ".idx", path_prefix + ".bin"
    if not os.path.exists(idx_path):
        raise DataFileError(f"index file {idx_path} not found; run tools/preprocess_data.py to create it")
    if not os.path.exists(bin_path):
        raise DataFileError(
            f"data file {bin_path} is missing for index {idx_path}; the pair was copied incompletely "
            "or preprocessing was interrupted; re-run tools/preprocess_data.py"
        )
    try:
        return megatron_indexed_dataset().IndexedDataset(path_prefix, mmap=True)
    except Exception as exc:  # megatron raises AssertionError/struct.error on a corrupt header
        raise DataFileError(f"cannot read {idx_path} as a megatron-core index: {exc!r}") from exc


class DomainDataset:
    """Fixed-length samples of one domain; index ``i`` in ``[0, inf)`` walks shuffled epochs.

    ``ds[i]`` returns the window ``perm_e[i % num_samples]`` of epoch ``e = i // num_samples``, where
    ``perm_e`` is a permutation seeded from ``(seed, domain_index, e)``. Within an epoch no window
    repeats; epochs never run out.

    Opening costs O(1) in the size of the files: the ``.idx`` and ``.bin`` are memory-mapped and only
    the first and last sequence of the index are read. The token-id check against ``vocab_size``
    uses ``recorded_max_token_id`` (the largest id, recorded at preprocessing) when given; without it
    the whole file is read once (``check_layout`` and ``check_vocab``).
    """

    _PERM_CACHE_EPOCHS = 2  # the plan's cursor crosses an epoch boundary inside one batch at most

    def __init__(
        self,
        path_prefix: str,
        seq_len_tokens: int,
        seed: int,
        domain_index: int,
        name: str | None = None,
        vocab_size: int | None = None,
        recorded_max_token_id: int | None = None,
    ) -> None:
        if seq_len_tokens < 1:
            raise ValueError(f"seq_len_tokens must be >= 1, got {seq_len_tokens}")
        self.path_prefix = path_prefix
        self.name = name if name is not None else os.path.basename(path_prefix)
        self.seq_len_tokens = int(seq_len_tokens)
        self.seed = int(seed)
        self.domain_index = int(domain_index)
        self.indexed = open_indexed_dataset(path_prefix)
        index = self.indexed.index
        self.num_documents = len(index.document_indices) - 1
        self.num_tokens = _num_tokens_from_ends(path_prefix, index)
        bin_path = path_prefix + ".bin"
        if self.num_tokens < self.seq_len_tokens + 1:
            raise DataFileError(
                f"{bin_path} holds {self.num_tokens} tokens, fewer than one sample of "
                f"seq_len_tokens + 1 = {self.seq_len_tokens + 1}; use a shorter sequence or more data"
            )
        self.tokens = np.memmap(bin_path, dtype=index.dtype, mode="r")  # (num_tokens,)
        self.num_samples = (self.num_tokens - 1) // self.seq_len_tokens
        self.max_token_id = None if recorded_max_token_id is None else int(recorded_max_token_id)
        if vocab_size is not None:
            if self.max_token_id is None:
                check_layout(path_prefix, index)
            self.check_vocab(vocab_size)
        self._perms: OrderedDict[int, np.ndarray] = OrderedDict()

    def __getstate__(self) -> dict:
        # Pickling (e.g. into DataLoader workers) must not copy the memory-mapped tokens: reopen instead.
        state = self.__dict__.copy()
        for key in ("indexed", "tokens", "_perms"):
            state.pop(key)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.indexed = open_indexed_dataset(self.path_prefix)
        self.tokens = np.memmap(self.path_prefix + ".bin", dtype=self.indexed.index.dtype, mode="r")
        self._perms = OrderedDict()

    def check_vocab(self, vocab_size: int) -> None:
        """Raise if any token id is outside ``[0, vocab_size)``.

        Uses the largest id recorded at preprocessing when there is one; otherwise one streaming pass
        over the file (seconds per GB), whose result is kept.
        """
        if self.max_token_id is None:
            self.max_token_id = scan_token_ids(self.path_prefix + ".bin", self.indexed.index.dtype, vocab_size)
            return
        if self.max_token_id >= vocab_size:
            raise DataFileError(
                f"{self.path_prefix}.bin contains token id {self.max_token_id} outside [0, {vocab_size}) "
                "(its largest id, recorded at preprocessing); it was tokenized with a different tokenizer "
                "than the model's vocab_size; re-run preprocessing with the model's tokenizer or raise "
                "model.vocab_size"
            )

    def __len__(self) -> int:
        return self.num_samples

    def epoch_permutation(self, epoch: int) -> np.ndarray:
        """The window order of ``epoch``, a permutation of ``range(num_samples)``."""
        perm = self._perms.get(epoch)
        if perm is None:
            rng = np.random.default_rng([self.seed, self.domain_index, int(epoch)])
            dtype = np.int32 if self.num_samples < 2**31 else np.int64
            perm = rng.permutation(np.arange(self.num_samples, dtype=dtype))
            self._perms[epoch] = perm
            while len(self._perms) > self._PERM_CACHE_EPOCHS:
                self._perms.popitem(last=False)
        return perm

    def window_ids(self, sample_indices: np.ndarray) -> np.ndarray:
        """Global sample indices ``i`` -> window ids ``j`` (token start ``j * seq_len_tokens``)."""
        idx = np.asarray(sample_indices, dtype=np.int64)
        if idx.size and idx.min() < 0:
            raise IndexError(f"sample indices must be >= 0, got {idx.min()}")
        epochs = idx // self.num_samples
        within = idx % self.num_samples
        out = np.empty_like(idx)
        for epoch in np.unique(epochs):
            sel = epochs == epoch
            out[sel] = self.epoch_permutation(int(epoch))[within[sel]]
        return out

    def get_many(self, sample_indices: np.ndarray) -> np.ndarray:
        """Samples for a batch of global indices; int64 array (n, seq_len_tokens + 1)."""
        starts = self.window_ids(sample_indices) * self.seq_len_tokens  # (n,)
        if starts.size == 0:
            return np.empty((0, self.seq_len_tokens + 1), dtype=np.int64)
        # One contiguous read per window beats fancy indexing on a memmap (which materialises the
        # (n, S+1) index array and gathers element by element).
        out = np.empty((starts.size, self.seq_len_tokens + 1), dtype=np.int64)
        for row, start in enumerate(starts.tolist()):
            out[row] = self.tokens[start : start + self.seq_len_tokens + 1]
        return out

    def __getitem__(self, i: int) -> np.ndarray:
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"DomainDataset index must be an int, got {type(i).__name__}")
        return self.get_many(np.array([i]))[0]

    def __repr__(self) -> str:
        return (
            f"DomainDataset(name={self.name!r}, documents={self.num_documents}, tokens={self.num_tokens}, "
            f"seq_len_tokens={self.seq_len_tokens}, num_samples={self.num_samples})"
        )



# --- whole-file checks: O(1) at start-up, streaming for the full check ------------------------------

_SCAN_CHUNK_ITEMS = 1 << 24  # items per read in the full checks: bounded memory for any file size


def _num_tokens_from_ends(path_prefix: str, index) -> int:
    """Tokens in ``PREFIX.bin``, read from the first and last sequence of the index only.

    The end of the last sequence must be the end of the ``.bin`` (catches truncated and mismatched
    pairs without reading the per-document arrays, which run to GBs at Pile scale). That sequences
    are back to back in between is what ``check_layout`` proves, at preprocessing or ``--verify``.
    """
    itemsize = np.dtype(index.dtype).itemsize
    bin_path = path_prefix + ".bin"
    bin_bytes = os.path.getsize(bin_path)
    num_sequences = len(index.sequence_lengths)
    if num_sequences == 0:
        first, end = 0, 0
    else:
        first = int(index.sequence_pointers[0])
        end = int(index.sequence_pointers[-1]) + int(index.sequence_lengths[-1]) * itemsize
    if first != 0 or end != bin_bytes:
        raise DataFileError(
            f"{bin_path} holds {bin_bytes} bytes but {path_prefix}.idx describes {end}; the pair is "
            "inconsistent (truncated copy?); re-run tools/preprocess_data.py"
        )
    return bin_bytes // itemsize


def check_layout(path_prefix: str, index) -> int:
    """Prove that sequences are stored back to back in index order; returns the number of tokens.

    Windows are slices of the ``.bin``, which is only right for such files (always true for
    ``IndexedDatasetBuilder`` output, including merged files). Reads the index in chunks.
    """
    itemsize = np.dtype(index.dtype).itemsize
    lengths, pointers = index.sequence_lengths, index.sequence_pointers
    offset_bytes = 0
    for lo in range(0, len(lengths), _SCAN_CHUNK_ITEMS):
        length_c = np.asarray(lengths[lo : lo + _SCAN_CHUNK_ITEMS], dtype=np.int64)  # (chunk,)
        ends_c = offset_bytes + np.cumsum(length_c) * itemsize
        starts_c = ends_c - length_c * itemsize
        if not np.array_equal(pointers[lo : lo + _SCAN_CHUNK_ITEMS], starts_c):
            raise DataFileError(
                f"{path_prefix}.idx: sequences are not stored contiguously in {path_prefix}.bin; "
                "rewrite the file with IndexedDatasetBuilder"
            )
        offset_bytes = int(ends_c[-1])
    return _num_tokens_from_ends(path_prefix, index)


def scan_token_ids(bin_path: str, dtype, vocab_size: int) -> int:
    """Read ``bin_path`` once (plain reads of bounded size, no mmap) and return its largest token id.

    Raises ``DataFileError`` naming the file and the position of the first id outside
    ``[0, vocab_size)``.
    """
    largest = -1
    position = 0
    with open(bin_path, "rb") as fh:
        while True:
            part = np.fromfile(fh, dtype=dtype, count=_SCAN_CHUNK_ITEMS)
            if part.size == 0:
                return largest
            lo, hi = int(part.min()), int(part.max())
            if lo < 0 or hi >= vocab_size:
                first = int(np.flatnonzero((part < 0) | (part >= vocab_size))[0])
                raise DataFileError(
                    f"{bin_path} contains token id {int(part[first])} outside [0, {vocab_size}) at token "
                    f"{position + first}; it was tokenized with a different tokenizer than the model's "
                    "vocab_size or is corrupt; re-run preprocessing with the model's tokenizer or raise "
                    "model.vocab_size"
                )
            largest = max(largest, hi)
            position += part.size


# --- the multi-domain directory written by tools/preprocess_data.py -------------------------------

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "acodm-domains"
MANIFEST_FORMAT_VERSION = 1


def read_manifest(data_dir: str) -> dict:
    """Load and sanity-check ``DATA_DIR/manifest.json``."""
    import json

    path = os.path.join(data_dir, MANIFEST_FILE)
    if not os.path.exists(path):
        raise DataFileError(
            f"{path} not found; {data_dir} is not a directory written by tools/preprocess_data.py"
        )
    try:
        with open(path) as fh:
            manifest = json.load(fh)
    except json.JSONDecodeError as exc:
        raise DataFileError(f"{path} is not valid JSON: {exc}") from exc
    if manifest.get("format") != MANIFEST_FORMAT:
        raise DataFileError(f"{path}: format is {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    if manifest.get("format_version", 0) > MANIFEST_FORMAT_VERSION:
        raise DataFileError(
            f"{path}: format_version {manifest['format_version']} is newer than this code understands "
            f"({MANIFEST_FORMAT_VERSION}); update acodm"
        )
    for key in ("domains", "splits", "tokenizer"):
        if key not in manifest:
            raise DataFileError(f"{path}: missing key {key!r}")
    return manifest


class DomainCorpus:
    """The K domains of one split. Domain id ``k`` is the index of the domain in ``names``."""

    def __init__(self, data_dir: str, split: str, names: list[str], datasets: list[DomainDataset],
                 manifest: dict) -> None:
        self.data_dir = data_dir
        self.split = split
        self.names = names
        self.datasets = datasets
        self.manifest = manifest

    @property
    def num_domains(self) -> int:
        return len(self.names)

    @property
    def samples_per_epoch(self) -> list[int]:
        return [ds.num_samples for ds in self.datasets]

    @property
    def seq_len_tokens(self) -> int:
        return self.datasets[0].seq_len_tokens

    def __repr__(self) -> str:
        return f"DomainCorpus({self.data_dir!r}, split={self.split!r}, names={self.names})"


def open_domains(
    data_dir: str,
    split: str = "train",
    seq_len_tokens: int = 2048,
    seed: int = 1234,
    domains: list[str] | None = None,
    vocab_size: int | None = None,
    expected_tokenizer_sha256: str | None = None,
    check_token_ids: bool = True,
) -> DomainCorpus:
    """Open every domain of ``split`` (manifest order) or the given ``domains`` (in the given order).

    Validates on open: unknown domain names, a domain without data in this split, missing/inconsistent
    ``.bin``/``.idx`` files, token ids >= ``vocab_size`` (defaults to the manifest's tokenizer
    vocab size), and, when given, the sha256 of the tokenizer the data was made with.

    Opening reads no token file: ``tools/preprocess_data.py`` records each file's largest token id in
    the manifest (``token_ids_verified``) and the check compares that number. A manifest without the
    record (written before it existed, or by another tool) makes this read every file once, with a
    one-line hint to record it (``tools/preprocess_data.py --verify DIR``). ``check_token_ids=False``
    skips the check. Samples of domain ``k`` (its index in ``names``) are shuffled per epoch from
    ``(seed, k, epoch)``.
    """
    manifest = read_manifest(data_dir)
    manifest_path = os.path.join(data_dir, MANIFEST_FILE)
    if expected_tokenizer_sha256 is not None:
        found = manifest["tokenizer"].get("sha256")
        if found != expected_tokenizer_sha256:
            raise DataFileError(
                f"{manifest_path}: data was tokenized with tokenizer sha256 {found}, but the run expects "
                f"{expected_tokenizer_sha256}; re-run tools/preprocess_data.py with the run's tokenizer"
            )
    file_of = {d["name"]: d["file"] for d in manifest["domains"]}
    available = [d["name"] for d in manifest["domains"]]
    if split not in manifest["splits"]:
        raise DataFileError(
            f"{manifest_path}: no split {split!r}; available splits: {sorted(manifest['splits'])}"
        )
    split_info = manifest["splits"][split]
    if domains is None:
        names = list(available)
    else:
        names = list(domains)
        unknown = [n for n in names if n not in file_of]
        if unknown:
            raise DataFileError(f"unknown domain(s) {unknown} in {data_dir}; available: {available}")
        if len(set(names)) != len(names):
            raise ValueError(f"domains lists a name twice: {names}")
    if not names:
        raise DataFileError(f"{manifest_path} lists no domains")
    missing = [n for n in names if n not in split_info]
    if missing:
        raise DataFileError(
            f"domain(s) {missing} have no data in split {split!r} of {data_dir}; pass domains= with the "
            f"domains present in every split you use (present in {split!r}: {sorted(split_info)})"
        )
    if vocab_size is None:
        vocab_size = manifest["tokenizer"].get("vocab_size")
    if not check_token_ids:
        vocab_size = None
    recorded = {name: recorded_max_token_id(manifest, split, name) for name in names}
    if vocab_size is not None and None in recorded.values():
        print(f"note: {manifest_path} does not record verified token ids, so start-up reads every "
              f"{split} token file to check them (slow at scale); run `python tools/preprocess_data.py "
              f"--verify {data_dir}` once to check and record them", file=sys.stderr)
    datasets = []
    for k, name in enumerate(names):
        ds = DomainDataset(
            os.path.join(data_dir, split, file_of[name]),
            seq_len_tokens=seq_len_tokens,
            seed=seed,
            domain_index=k,
            name=name,
            vocab_size=vocab_size,
            recorded_max_token_id=recorded[name],
        )
        expected_tokens = split_info[name].get("tokens")
        if expected_tokens is not None and ds.num_tokens != int(expected_tokens):
            raise DataFileError(
                f"{ds.path_prefix}.bin holds {ds.num_tokens} tokens but {manifest_path} records "
                f"{expected_tokens}; the files changed after preprocessing; re-run tools/preprocess_data.py"
            )
        datasets.append(ds)
    return DomainCorpus(data_dir, split, names, datasets, manifest)


def recorded_max_token_id(manifest: dict, split: str, name: str) -> int | None:
    """The largest token id of ``split``/``name`` as verified when the files were written, or None.

    Trusted only while the record names the tokenizer the manifest names (a manifest edited to
    another tokenizer loses it).
    """
    record = manifest.get("token_ids_verified")
    if not isinstance(record, dict) or record.get("tokenizer_sha256") != manifest["tokenizer"].get("sha256"):
        return None
    value = manifest["splits"].get(split, {}).get(name, {}).get("max_token_id")
    return int(value) if isinstance(value, int) else None
