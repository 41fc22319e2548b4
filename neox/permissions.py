"""Output files and directories readable as the umask allows.

Some writers create private files whatever the umask: ``tempfile.mkdtemp`` (0700) and the safetensors writer
(0600). Checkpoints and token files are meant to be shared (a team on a cluster reads one run's checkpoints),
so the directories we publish get the modes a plain ``mkdir``/``open`` would have given them.
"""

from __future__ import annotations

import os
from pathlib import Path


def current_umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


def respect_umask(root: str | os.PathLike[str]) -> None:
    """chmod ``root`` and everything under it to 0777 (directories) / 0666 (files) minus the umask, keeping
    execute bits of files that have them."""
    mask = current_umask()
    root = Path(root)
    paths = [root, *root.rglob("*")] if root.is_dir() else [root]
    for path in paths:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode & 0o777
        base = 0o777 if path.is_dir() or mode & 0o111 else 0o666
        if mode != base & ~mask:
            path.chmod(base & ~mask)
