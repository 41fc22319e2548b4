"""Writing and hashing single files: every writer of a file a reader may open at any time (configs,
manifests, metrics, tokenizers, reports) replaces it in one rename, so a reader sees the old file or
the new one, never a torn one. Directories are published the same way by ``acodm.serialization.atomic_directory``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from neox.permissions import current_umask


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a fresh temporary sibling of ``path`` to write; on success it replaces ``path`` in one rename,
    on failure it is removed. The name is unique, so two writers never write into each other's file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        # mkstemp makes the file 0600; the published file gets the mode a plain open() would give it.
        tmp.chmod(0o666 & ~current_umask())
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
