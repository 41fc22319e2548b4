"""DomainDataset / open_domains / MicroBatchLoader / ValidationSet on synthetic megatron-core files."""

import json
import os
import shutil

import numpy as np
import pytest
import torch

from neox.data import (
    DataFileError,
    DomainDataset,
    MicroBatchLoader,
    MixturePlan,
    ValidationSet,
    open_domains,
)
from neox.data.preprocess import write_manifest
from tests.synthetic_data import write_synthetic_domains

SEQ = 16
VOCAB = 300


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "data"
    write_synthetic_domains(str(out), num_domains=4, docs_per_domain=40, vocab_size=VOCAB, seed=0,
                            mean_doc_tokens=12)
    return str(out)


def _reference_windows(prefix, seq_len):
    """All windows of a file by brute force through megatron-core's own reader."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    stream = np.concatenate([np.asarray(doc, dtype=np.int64) for doc in IndexedDataset(prefix)])
    n = (stream.size - 1) // seq_len
    return np.stack([stream[j * seq_len : j * seq_len + seq_len + 1] for j in range(n)])


def test_synthetic_manifest_layout(data_dir):
    manifest = json.load(open(os.path.join(data_dir, "manifest.json")))
    assert manifest["tokenizer"]["name"] == "synthetic" and manifest["tokenizer"]["sha256"] is None
    assert [d["name"] for d in manifest["domains"]] == [f"domain_{k:02d}" for k in range(4)]
    assert sorted(manifest["splits"]) == ["train", "val"]
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    for split, domains in manifest["splits"].items():
        for name, entry in domains.items():
            ds = IndexedDataset(os.path.join(data_dir, split, name))
            assert len(ds) == entry["documents"]
            assert int(ds.sequence_lengths.sum()) == entry["tokens"]
            assert all(doc[-1] == 0 for doc in ds)  # every document ends in EOD


def test_epoch_is_a_permutation_of_megatron_style_windows(data_dir):
    corpus = open_domains(data_dir, "train", seq_len_tokens=SEQ, seed=7)
    for k, ds in enumerate(corpus.datasets):
        windows = _reference_windows(os.path.join(data_dir, "train", corpus.names[k]), SEQ)
        assert ds.num_samples == windows.shape[0]
        for epoch in range(2):
            got = np.stack([ds[epoch * ds.num_samples + i] for i in range(ds.num_samples)])
            assert got.dtype == np.int64 and got.shape == (ds.num_samples, SEQ + 1)
            ids = ds.window_ids(np.arange(ds.num_samples) + epoch * ds.num_samples)
            assert sorted(ids.tolist()) == list(range(ds.num_samples))  # no repeat within an epoch
            assert np.array_equal(got, windows[ids])
        # consecutive windows share one token (stride seq_len, length seq_len + 1)
        assert np.array_equal(windows[:-1, -1], windows[1:, 0])
        assert not np.array_equal(ds.window_ids(np.arange(ds.num_samples)),
                                  ds.window_ids(np.arange(ds.num_samples) + ds.num_samples))


def test_pickle_reopens_instead_of_copying(data_dir):
    import pickle

    ds = open_domains(data_dir, "train", SEQ, seed=7).datasets[1]
    blob = pickle.dumps(ds)
    assert len(blob) < ds.num_tokens  # the tokens are not in the pickle
    again = pickle.loads(blob)
    idx = np.arange(2 * ds.num_samples)
    assert np.array_equal(again.get_many(idx), ds.get_many(idx))


def test_sample_order_depends_on_seed_domain_epoch_only(data_dir):
    a = open_domains(data_dir, "train", SEQ, seed=7)
    b = open_domains(data_dir, "train", SEQ, seed=7)
    c = open_domains(data_dir, "train", SEQ, seed=8)
    idx = np.arange(3 * a.datasets[0].num_samples)
    assert np.array_equal(a.datasets[0].get_many(idx), b.datasets[0].get_many(idx))
    assert not np.array_equal(a.datasets[0].window_ids(idx), c.datasets[0].window_ids(idx))


def test_domain_selection_and_errors(data_dir):
    corpus = open_domains(data_dir, "val", SEQ, seed=0, domains=["domain_02", "domain_00"])
    assert corpus.names == ["domain_02", "domain_00"] and corpus.num_domains == 2
    with pytest.raises(DataFileError, match=r"unknown domain.*nope.*available.*domain_00"):
        open_domains(data_dir, "train", SEQ, seed=0, domains=["nope"])
    with pytest.raises(DataFileError, match="no split 'test'"):
        open_domains(data_dir, "test", SEQ, seed=0)
    with pytest.raises(DataFileError, match=r"manifest.json.*sha256"):
        open_domains(data_dir, "train", SEQ, seed=0, expected_tokenizer_sha256="ab" * 32)


def test_ids_outside_vocab_name_the_file(data_dir):
    with pytest.raises(DataFileError, match=r"domain_01\.bin contains token id \d+ outside \[0, 50\)"):
        open_domains(data_dir, "train", SEQ, seed=0, vocab_size=50, domains=["domain_01"])
    open_domains(data_dir, "train", SEQ, seed=0, vocab_size=VOCAB)  # the true vocab passes
    open_domains(data_dir, "train", SEQ, seed=0, vocab_size=50, check_token_ids=False)  # opted out


def test_startup_trusts_the_recorded_ids_and_memory_maps_the_rest(data_dir, monkeypatch):
    import neox.data.indexed as indexed

    def must_not_run(*args, **kwargs):
        raise AssertionError("start-up read a whole file")

    monkeypatch.setattr(indexed, "scan_token_ids", must_not_run)
    monkeypatch.setattr(indexed, "check_layout", must_not_run)
    corpus = open_domains(data_dir, "train", SEQ, seed=0, vocab_size=VOCAB)
    with pytest.raises(DataFileError, match=r"domain_01\.bin contains token id \d+ outside \[0, 50\) \(its "
                                            r"largest id, recorded at preprocessing\)"):
        open_domains(data_dir, "train", SEQ, seed=0, vocab_size=50, domains=["domain_01"])
    manifest = json.load(open(os.path.join(data_dir, "manifest.json")))
    for k, ds in enumerate(corpus.datasets):
        assert isinstance(ds.tokens, np.memmap) and ds.tokens.shape == (ds.num_tokens,)
        assert ds.num_tokens == manifest["splits"]["train"][corpus.names[k]]["tokens"]
        index = ds.indexed.index
        for per_document in (index.sequence_lengths, index.sequence_pointers, index.document_indices):
            assert not per_document.flags.owndata  # views of the mapped .idx, not copies
        assert ds._perms == {}  # the epoch permutation waits for the first batch


def test_missing_bin_names_the_file(data_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(data_dir, copy)
    os.remove(copy / "train" / "domain_03.bin")
    with pytest.raises(DataFileError, match=r"domain_03\.bin is missing"):
        open_domains(str(copy), "train", SEQ, seed=0)
    os.remove(copy / "train" / "domain_03.idx")
    with pytest.raises(DataFileError, match=r"domain_03\.idx not found"):
        open_domains(str(copy), "train", SEQ, seed=0)


def test_truncated_bin_is_detected(data_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(data_dir, copy)
    path = copy / "train" / "domain_00.bin"
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(DataFileError, match="inconsistent"):
        open_domains(str(copy), "train", SEQ, seed=0)


def test_files_from_megatron_builder_load(tmp_path):
    """Files written directly with megatron-core (int32, multi-sequence documents, no EOD)."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(0)
    os.makedirs(tmp_path / "d" / "train")
    stream = []
    stats = {}
    for name in ("web", "code"):
        builder = IndexedDatasetBuilder(str(tmp_path / "d" / "train" / f"{name}.bin"), dtype=np.int32)
        tokens = 0
        for _ in range(10):
            lengths = rng.integers(1, 9, size=3).tolist()
            doc = rng.integers(0, 70000, size=sum(lengths))  # ids beyond uint16
            builder.add_document(torch.from_numpy(doc), lengths)
            tokens += doc.size
            if name == "code":
                stream.append(doc)
        builder.finalize(str(tmp_path / "d" / "train" / f"{name}.idx"))
        stats[name] = {"documents": 10, "tokens": tokens}
    write_manifest(str(tmp_path / "d"), {"name": "x", "path": None, "vocab_size": 70000, "eod_id": 0,
                                         "sha256": None}, np.int32, {"train": stats},
                   {"web": "web", "code": "code"}, tool="test")
    corpus = open_domains(str(tmp_path / "d"), "train", seq_len_tokens=8, seed=0)
    assert corpus.names == ["code", "web"]
    stream = np.concatenate(stream)
    code = corpus.datasets[0]
    assert code.num_samples == (stream.size - 1) // 8
    j = int(code.window_ids(np.array([0]))[0])
    assert np.array_equal(code[0], stream[j * 8 : j * 8 + 9])
    # the bare file, without a manifest, is a DomainDataset too
    bare = DomainDataset(str(tmp_path / "d" / "train" / "code"), seq_len_tokens=8, seed=0, domain_index=0)
    assert np.array_equal(bare[5], code[5])


def _loader(data_dir, dp_rank, dp_size, micro, seed=3):
    corpus = open_domains(data_dir, "train", SEQ, seed=seed)
    plan = MixturePlan(corpus.samples_per_epoch, global_batch_sequences=24, seed=seed)
    return MicroBatchLoader(corpus, plan, dp_rank=dp_rank, dp_size=dp_size, micro_batch_sequences=micro)


def _steps(loader, num_steps, schedule):
    out = []
    for step in range(num_steps):
        if step in schedule:
            loader.plan.set_weights(schedule[step])
        out.append(loader.next_step())
    return out


SCHEDULE = {0: np.array([0.1, 0.2, 0.3, 0.4]), 3: np.array([0.7, 0.1, 0.1, 0.1]), 5: np.full(4, 0.25)}


def test_rank_shards_partition_the_global_batch(data_dir):
    whole = _steps(_loader(data_dir, 0, 1, micro=24), 7, SCHEDULE)
    shards = [_steps(_loader(data_dir, r, 3, micro=4), 7, SCHEDULE) for r in range(3)]
    for step in range(7):
        tokens, domains = whole[step][0]
        assert tokens.shape == (24, SEQ + 1) and tokens.dtype == torch.int64
        assert domains.dtype == torch.int64
        parts = [mb for r in range(3) for mb in shards[r][step]]
        assert len(parts) == 6 and all(mb[0].shape == (4, SEQ + 1) for mb in parts)
        assert torch.equal(torch.cat([mb[0] for mb in parts]), tokens)
        assert torch.equal(torch.cat([mb[1] for mb in parts]), domains)
    # the tokens really belong to the domain the batch says
    corpus = open_domains(data_dir, "train", SEQ, seed=3)
    plan = MixturePlan(corpus.samples_per_epoch, 24, seed=3)
    plan.set_weights(SCHEDULE[0])
    domain_b, sample_b = plan.next_global_batch()
    for row in range(24):
        assert torch.equal(whole[0][0][0][row],
                           torch.from_numpy(corpus.datasets[domain_b[row]][int(sample_b[row])]))


def test_loader_resume_equals_uninterrupted(data_dir):
    reference = _steps(_loader(data_dir, 1, 2, micro=6), 8, SCHEDULE)
    first = _loader(data_dir, 1, 2, micro=6)
    head = _steps(first, 4, SCHEDULE)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = _loader(data_dir, 1, 2, micro=6)
    resumed.load_state_dict(state)
    tail = []
    for step in range(4, 8):
        if step in SCHEDULE:
            resumed.plan.set_weights(SCHEDULE[step])
        tail.append(resumed.next_step())
    for a, b in zip(reference, head + tail):
        assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))


def test_loader_rejects_indivisible_batches(data_dir):
    corpus = open_domains(data_dir, "train", SEQ, seed=0)
    plan = MixturePlan(corpus.samples_per_epoch, 24, seed=0)
    with pytest.raises(ValueError, match=r"data.global_batch_sequences \(24\) must be divisible by .* = 1 x 5"):
        MicroBatchLoader(corpus, plan, 0, 5, 1)
    with pytest.raises(ValueError, match=r"data.global_batch_sequences \(24\) must be divisible by .* = 5 x 2"):
        MicroBatchLoader(corpus, plan, 0, 2, 5)


def test_validation_set_fixed_and_covered_once(data_dir):
    val = open_domains(data_dir, "val", SEQ, seed=1)
    big = max(ds.num_samples for ds in val.datasets)
    vs = ValidationSet(val, samples_per_domain=big - 1, micro_batch_sequences=5)
    assert vs.num_samples_per_domain == [min(big - 1, ds.num_samples) for ds in val.datasets]
    single = list(vs.batches())
    again = list(ValidationSet(open_domains(data_dir, "val", SEQ, seed=1), big - 1, 5).batches())
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(single, again))
    tokens = torch.cat([t for t, _ in single])
    domains = torch.cat([d for _, d in single])
    assert tokens.shape[0] == sum(vs.num_samples_per_domain)
    for k, ds in enumerate(val.datasets):  # the first N samples of epoch 0 of each domain
        expected = torch.from_numpy(ds.get_many(np.arange(vs.num_samples_per_domain[k])))
        assert torch.equal(tokens[domains == k], expected)
    for dp_size in (2, 3):
        parts = [list(vs.batches(r, dp_size)) for r in range(dp_size)]
        assert [len(p) for p in parts] == [vs.num_batches(r, dp_size) for r in range(dp_size)]
        assert torch.equal(torch.cat([t for p in parts for t, _ in p]), tokens)
        assert torch.equal(torch.cat([d for p in parts for _, d in p]), domains)
