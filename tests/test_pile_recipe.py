"""The preprocessing recipe in configs/data/pile.yml, read from the file and run as written on a tiny fake Pile."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest
import zstandard

from tests.trainer_utils import ROOT, clean_env

PILE_YML = ROOT / "configs" / "data" / "pile.yml"
DOMAINS = {"Pile-CC": "the web says", "Github": "def f(x): return x", "Ubuntu IRC": "<nick> hi all"}


def recipe_commands(path=PILE_YML) -> list[str]:
    """The shell commands of the ``# Preprocess with`` comment block, continuation lines joined."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# Preprocess with"))
    commands, current = [], ""
    for line in lines[start + 1:]:
        if not line.startswith("#   "):
            break
        part = line[1:].strip()
        current += part[:-1].strip() + " " if part.endswith("\\") else part
        if not part.endswith("\\"):
            commands.append(current)
            current = ""
    return commands


def _pile_docs(split: str, shard: int, n: int) -> bytes:
    records = [{"text": f"{stem} {split} {shard} number {i} " + "word " * (i % 7), "meta": {"pile_set_name": domain}}
               for domain, stem in DOMAINS.items() for i in range(n)]
    return zstandard.ZstdCompressor().compress("".join(json.dumps(r) + "\n" for r in records).encode())


def _tiny_tokenizer(path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|padding|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([f"{stem} number word" for stem in DOMAINS.values()] * 10, trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))


@pytest.mark.launches
def test_pile_recipe_runs_as_written(tmp_path):
    """Each command runs in a directory laid out like the recipe's relative paths (pile/train/*.jsonl.zst,
    pile/val.jsonl.zst); only the tokenizer download (offline here) and the worker count are replaced. The
    result opens as the config's data section expects: both splits, every domain, the Pile's names."""
    commands = recipe_commands()
    assert [shlex.split(c)[1] for c in commands] == ["tools/get_tokenizer.py", "tools/preprocess_data.py"]
    (tmp_path / "pile" / "train").mkdir(parents=True)
    for shard in range(2):
        (tmp_path / "pile" / "train" / f"{shard:02d}.jsonl.zst").write_bytes(_pile_docs("train", shard, 20))
    (tmp_path / "pile" / "val.jsonl.zst").write_bytes(_pile_docs("val", 0, 6))
    _tiny_tokenizer(tmp_path / "data" / "pile" / "tokenizer.json")  # stands in for get_tokenizer.py's download

    command = commands[1].replace("python tools/", f"{shlex.quote(sys.executable)} {ROOT}/tools/", 1)
    command = command.replace("--workers 32", "--workers 1") + " --quiet"
    proc = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=clean_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"{command}\n{proc.stderr[-3000:]}"

    import yaml

    from neox.data import open_domains, read_manifest

    data = yaml.safe_load(PILE_YML.read_text())["data"]
    out = tmp_path / data["path"]
    splits = read_manifest(str(out))["splits"]
    assert set(splits) == {"train", "val"} and all(set(splits[s]) == set(DOMAINS) for s in splits)
    assert set(DOMAINS) <= set(data["reference_weights"])  # the names the weights are keyed by
    for split in ("train", "val"):
        corpus = open_domains(str(out), split=split, seq_len_tokens=8, seed=0, vocab_size=300)
        assert sorted(corpus.names) == sorted(DOMAINS)
