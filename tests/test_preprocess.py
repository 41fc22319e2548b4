"""tools/preprocess_data.py: output read back through megatron-core, determinism, bad inputs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import zstandard

from neox.data import open_domains
from neox.data.preprocess import PreprocessConfig, PreprocessError, main, preprocess, sanitize_domain_name

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOMAINS = {"Pile-CC": "the web says", "Github": "def f(x): return x", "Ubuntu IRC": "<nick> hi all"}


def _docs(domain, split, n):
    stem = DOMAINS[domain]
    return [{"text": f"{stem} {split} number {i} " + "word " * (i % 7), "domain": domain} for i in range(n)]


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|padding|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    texts = [d["text"] for dom in DOMAINS for d in _docs(dom, "train", 30)]
    tok.train_from_iterator(texts, trainer)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    assert tok.token_to_id("<|endoftext|>") == 0 and tok.token_to_id("<|padding|>") == 1
    return str(path)


def _write_jsonl(path, records, compress=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    with open(path, "wb") as fh:
        fh.write(zstandard.ZstdCompressor().compress(data) if compress else data)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus") / "corpus"
    for domain in DOMAINS:
        for split, n in (("train", 25), ("val", 6)):
            _write_jsonl(str(root / domain.replace(" ", "_") / f"{split}.jsonl"), _docs(domain, split, n))
    return str(root)


def _run(inputs, out, tok, **kw):
    kw.setdefault("progress", False)
    return preprocess(PreprocessConfig(inputs=tuple(inputs), output_dir=str(out), tokenizer_path=tok, **kw))


def test_corpus_dir_reads_back_through_megatron(corpus_dir, tokenizer_path, tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from tokenizers import Tokenizer

    manifest = _run([corpus_dir], tmp_path / "out", tokenizer_path, chunk_lines=4)
    tok = Tokenizer.from_file(tokenizer_path)
    on_disk = json.load(open(tmp_path / "out" / "manifest.json"))
    assert on_disk["domains"] == [{"name": "Github", "file": "Github"}, {"name": "Pile-CC", "file": "Pile-CC"},
                                  {"name": "Ubuntu IRC", "file": "Ubuntu_IRC"}]
    assert on_disk["tokenizer"]["vocab_size"] == 300 and on_disk["tokenizer"]["eod_id"] == 0
    assert on_disk["tokenizer"]["sha256"] == manifest["tokenizer"]["sha256"] and len(on_disk["tokenizer"]["sha256"]) == 64
    assert on_disk["dtype"] == "uint16" and on_disk["tool_version"]
    for split, n in (("train", 25), ("val", 6)):
        for entry in on_disk["domains"]:
            ds = IndexedDataset(str(tmp_path / "out" / split / entry["file"]))
            expected = [tok.encode(d["text"], add_special_tokens=False).ids + [0]
                        for d in _docs(entry["name"], split, n)]
            assert [doc.tolist() for doc in ds] == expected
            assert ds.index.dtype == np.uint16
            stats = on_disk["splits"][split][entry["name"]]
            assert stats == {"documents": n, "tokens": sum(map(len, expected)),
                             "max_token_id": max(max(doc) for doc in expected)}
    assert on_disk["token_ids_verified"]["below_vocab_size"] == 300
    assert on_disk["token_ids_verified"]["tokenizer_sha256"] == on_disk["tokenizer"]["sha256"]
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
    corpus = open_domains(str(tmp_path / "out"), "val", seq_len_tokens=8, seed=0,
                          expected_tokenizer_sha256=on_disk["tokenizer"]["sha256"])
    assert corpus.names == ["Github", "Pile-CC", "Ubuntu IRC"]


def test_multiworker_output_identical(corpus_dir, tokenizer_path, tmp_path):
    _run([corpus_dir], tmp_path / "one", tokenizer_path, chunk_lines=3, workers=1)
    _run([corpus_dir], tmp_path / "two", tokenizer_path, chunk_lines=3, workers=2)
    for split in ("train", "val"):
        names = sorted(os.listdir(tmp_path / "one" / split))
        assert names == sorted(os.listdir(tmp_path / "two" / split)) and len(names) == 6
        for name in names:
            assert (tmp_path / "one" / split / name).read_bytes() == (tmp_path / "two" / split / name).read_bytes()
    assert (tmp_path / "one" / "manifest.json").read_bytes() == (tmp_path / "two" / "manifest.json").read_bytes()


def test_pile_style_zst_with_domain_key(tokenizer_path, tmp_path):
    records = [{"text": f"line {i} of text", "meta": {"pile_set_name": ["Pile-CC", "Github"][i % 2]}}
               for i in range(20)]
    _write_jsonl(str(tmp_path / "in" / "00.jsonl.zst"), records[:12], compress=True)
    _write_jsonl(str(tmp_path / "in" / "01.jsonl"), records[12:])
    _write_jsonl(str(tmp_path / "in" / "val.jsonl.zst"), records[:4], compress=True)
    manifest = _run([str(tmp_path / "in" / "00.jsonl.zst"), str(tmp_path / "in" / "01.jsonl")],
                    tmp_path / "out", tokenizer_path, domain_key="meta.pile_set_name",
                    val_inputs=(str(tmp_path / "in" / "val.jsonl.zst"),))
    assert manifest["splits"]["train"]["Pile-CC"]["documents"] == 10
    assert manifest["splits"]["train"]["Github"]["documents"] == 10
    assert manifest["splits"]["val"]["Github"]["documents"] == 2
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer_path)
    docs = IndexedDataset(str(tmp_path / "out" / "train" / "Github"))
    expected = [tok.encode(r["text"], add_special_tokens=False).ids + [0] for r in records[1::2]]
    assert [d.tolist() for d in docs] == expected  # input order kept across the two files


def test_malformed_json_names_file_and_line(tokenizer_path, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a", "domain": "x"}\n{"text": "b", "domain": "x"}\n{"text": broken\n')
    with pytest.raises(PreprocessError, match=r"bad\.jsonl:3: malformed JSON.*--skip-bad"):
        _run([str(path)], tmp_path / "out", tokenizer_path)
    assert os.listdir(tmp_path) == ["bad.jsonl"]  # no output, no leftover temporary directory


@pytest.mark.parametrize("record, reason", [
    ({"domain": "x"}, "no string field 'text'"),
    ({"text": "hi"}, "no string domain field 'domain'"),
    ({"text": "hi", "domain": "  "}, "empty domain"),
])
def test_bad_records_stop_the_run(tokenizer_path, tmp_path, record, reason):
    _write_jsonl(str(tmp_path / "in.jsonl"), [{"text": "ok", "domain": "x"}, record])
    with pytest.raises(PreprocessError, match=rf"in\.jsonl:2: record has .*{reason}"):
        _run([str(tmp_path / "in.jsonl")], tmp_path / "out", tokenizer_path)


def test_skip_bad_counts(tokenizer_path, tmp_path, capsys):
    lines = ['{"text": "fine", "domain": "a"}', "{nope", '{"domain": "a"}', "", '{"text": "also", "domain": "a"}']
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    rc = main(["--input", str(tmp_path / "in.jsonl"), "--output-dir", str(tmp_path / "out"),
               "--tokenizer", tokenizer_path, "--skip-bad", "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "skipped 2 bad record(s)" in out and "MB/s" in out and "tokens/s" in out
    manifest = json.load(open(tmp_path / "out" / "manifest.json"))
    assert manifest["splits"]["train"]["a"]["documents"] == 2
    rejects = tmp_path / "out" / "rejects.txt"
    assert f"listed in {rejects}" in out
    assert rejects.read_text().splitlines() == [f"{tmp_path / 'in.jsonl'}:2\tmalformed JSON (Expecting property "
                                                "name enclosed in double quotes: line 1 column 2 (char 1))",
                                                f"{tmp_path / 'in.jsonl'}:3\trecord has no string field 'text'"]


def test_corpus_dir_domain_comes_from_the_directory(tokenizer_path, tmp_path):
    root = tmp_path / "corpus"
    _write_jsonl(str(root / "Ubuntu_IRC" / "train.jsonl"), [{"text": "hi all"}, {"text": "hi", "domain": "Ubuntu IRC"}])
    _write_jsonl(str(root / "code" / "train.jsonl"), [{"text": "def f(): pass"}])
    manifest = _run([str(root)], tmp_path / "out", tokenizer_path)
    assert manifest["splits"]["train"]["Ubuntu_IRC"]["documents"] == 1  # the field-less record
    assert manifest["splits"]["train"]["Ubuntu IRC"]["documents"] == 1  # its field names it; it lives there
    assert manifest["splits"]["train"]["code"]["documents"] == 1
    _write_jsonl(str(root / "code" / "train.jsonl"), [{"text": "x = 1"}, {"text": "hello", "domain": "web"}])
    with pytest.raises(PreprocessError, match=r"code/train\.jsonl:2: record has domain 'web' .* directory of "
                                              r"domain 'code'"):
        _run([str(root)], tmp_path / "out2", tokenizer_path)


def test_cleanup_spares_the_temporary_directory_of_a_live_run(tokenizer_path, tmp_path):
    import socket

    _write_jsonl(str(tmp_path / "in.jsonl"), [{"text": "hello", "domain": "x"}])
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    try:
        live_tmp = tmp_path / f"out.tmp-{host}-{live.pid}-abc_1234"
        dead_tmp = tmp_path / f"out.tmp-{host}-{dead.pid}-xyz_5678"
        other_host_tmp = tmp_path / f"out.tmp-{host}-elsewhere-{dead.pid}-q1w2e3r4"
        old_style = tmp_path / "out.tmp-k9j8h7g6"  # made before owners were recorded: a leftover
        for d in (live_tmp, dead_tmp, other_host_tmp, old_style):
            d.mkdir()
            (d / "part.bin").write_bytes(b"x")
        _run([str(tmp_path / "in.jsonl")], tmp_path / "out", tokenizer_path)
        assert live_tmp.is_dir() and (live_tmp / "part.bin").exists()
        assert other_host_tmp.is_dir()
        assert not dead_tmp.exists() and not old_style.exists()
        assert (tmp_path / "out" / "manifest.json").exists()
    finally:
        live.kill()
        live.wait()


def _corrupt_token(bin_path, position, value):
    tokens = np.memmap(bin_path, dtype=np.uint16, mode="r+")
    tokens[position] = value
    tokens.flush()
    del tokens


def test_startup_reads_no_token_file_and_verify_catches_a_bad_id(corpus_dir, tokenizer_path, tmp_path, capsys):
    out = tmp_path / "out"
    _run([corpus_dir], out, tokenizer_path)
    assert main(["--verify", str(out), "--quiet"]) == 0
    assert "every id in [0, 300)" in capsys.readouterr().out
    bad_bin = out / "train" / "Github.bin"
    _corrupt_token(str(bad_bin), 5, 60000)
    corpus = open_domains(str(out), "train", seq_len_tokens=8, seed=0)  # start-up does not see it
    github = corpus.datasets[corpus.names.index("Github")]
    assert int(github.tokens[5]) == 60000
    assert main(["--verify", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{bad_bin} contains token id 60000 outside [0, 300) at token 5" in err
    result = subprocess.run([sys.executable, os.path.join(REPO, "tools", "preprocess_data.py"), "--verify",
                             str(out), "--quiet"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Github.bin contains token id 60000" in result.stderr


def test_startup_reads_only_the_ends_of_the_index_and_verify_reads_all(corpus_dir, tokenizer_path, tmp_path,
                                                                        capsys):
    out = tmp_path / "out"
    _run([corpus_dir], out, tokenizer_path)
    idx = out / "train" / "Pile-CC.idx"
    raw = bytearray(idx.read_bytes())
    count = int.from_bytes(raw[18:26], "little")  # header: magic 9, version 8, dtype 1, sequence count 8, ...
    pointer_1 = 34 + 4 * count + 8  # the second sequence pointer (int64), after the int32 lengths
    moved = int.from_bytes(raw[pointer_1 : pointer_1 + 8], "little") + 2
    raw[pointer_1 : pointer_1 + 8] = moved.to_bytes(8, "little")
    idx.write_bytes(bytes(raw))
    open_domains(str(out), "train", seq_len_tokens=8, seed=0)
    assert main(["--verify", str(out), "--quiet"]) == 2
    assert "Pile-CC.idx: sequences are not stored contiguously" in capsys.readouterr().err


def test_verify_records_the_check_in_an_old_manifest(corpus_dir, tokenizer_path, tmp_path, capsys):
    out = tmp_path / "out"
    _run([corpus_dir], out, tokenizer_path)
    path = out / "manifest.json"
    manifest = json.load(open(path))
    del manifest["token_ids_verified"]  # as written before the record existed
    for split in manifest["splits"].values():
        for entry in split.values():
            del entry["max_token_id"]
    path.write_text(json.dumps(manifest))
    capsys.readouterr()
    open_domains(str(out), "train", seq_len_tokens=8, seed=0)  # still reads, with a hint
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--verify {out}" in err
    with pytest.raises(ValueError, match=r"contains token id \d+ outside \[0, 20\) at token"):
        open_domains(str(out), "train", seq_len_tokens=8, seed=0, vocab_size=20)  # the old check still runs
    assert main(["--verify", str(out), "--quiet"]) == 0
    assert "recorded in its manifest" in capsys.readouterr().out
    assert json.load(open(path))["token_ids_verified"]["tokenizer_sha256"] == manifest["tokenizer"]["sha256"]
    open_domains(str(out), "train", seq_len_tokens=8, seed=0)
    assert capsys.readouterr().err == ""


def test_empty_input_file_is_an_error(tokenizer_path, tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(PreprocessError, match="no usable documents"):
        _run([str(tmp_path / "empty.jsonl")], tmp_path / "out", tokenizer_path)


def test_bad_tokenizer(tmp_path):
    _write_jsonl(str(tmp_path / "in.jsonl"), [{"text": "ok", "domain": "x"}])
    (tmp_path / "tok.json").write_text('{"not": "a tokenizer"}')
    with pytest.raises(PreprocessError, match=r"tok\.json is not a valid HF tokenizers file"):
        _run([str(tmp_path / "in.jsonl")], tmp_path / "out", str(tmp_path / "tok.json"))
    with pytest.raises(PreprocessError, match="tokenizer file .*missing.json not found"):
        _run([str(tmp_path / "in.jsonl")], tmp_path / "out", str(tmp_path / "missing.json"))


def test_tokenizer_without_eod(tmp_path):
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).save(str(tmp_path / "t.json"))
    _write_jsonl(str(tmp_path / "in.jsonl"), [{"text": "a", "domain": "x"}])
    with pytest.raises(PreprocessError, match="no end-of-document token.*--eod-token"):
        _run([str(tmp_path / "in.jsonl")], tmp_path / "out", str(tmp_path / "t.json"))


def test_existing_output_needs_overwrite(tokenizer_path, tmp_path):
    _write_jsonl(str(tmp_path / "in.jsonl"), [{"text": "hello", "domain": "x"}])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("old")
    with pytest.raises(PreprocessError, match="exists and is not empty; pass --overwrite"):
        _run([str(tmp_path / "in.jsonl")], tmp_path / "out", tokenizer_path)
    assert (tmp_path / "out" / "keep.txt").exists()
    _run([str(tmp_path / "in.jsonl")], tmp_path / "out", tokenizer_path, overwrite=True)
    assert sorted(os.listdir(tmp_path / "out")) == ["manifest.json", "train"]
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl", "out"]


def test_sanitize_domain_names():
    assert sanitize_domain_name("Pile-CC") == "Pile-CC"
    assert sanitize_domain_name("Github") == "Github"
    assert sanitize_domain_name("Ubuntu IRC") == "Ubuntu_IRC"
    assert sanitize_domain_name("../etc") == "_._etc"
    from neox.data.preprocess import assign_file_names

    assert assign_file_names(["a b", "a_b", "A_B"]) == {"A_B": "A_B", "a b": "a_b-2", "a_b": "a_b-3"}


def test_cli_entry_point_runs_from_checkout(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(REPO, "tools", "preprocess_data.py"), "--help"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 0 and "--domain-key" in result.stdout
    result = subprocess.run([sys.executable, os.path.join(REPO, "tools", "preprocess_data.py"), "--input",
                             str(tmp_path / "none.jsonl"), "--output-dir", str(tmp_path / "o"), "--tokenizer",
                             str(tmp_path / "t.json")], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 2 and "error:" in result.stderr and "t.json not found" in result.stderr
