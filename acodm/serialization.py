"""Save / load nested state dicts without pickle: tensors to safetensors, everything else to JSON.

Layout of a state directory:
    tensors.safetensors   every torch tensor and numpy array, under a dotted key of its path
    state.json            the tree, with each tensor/array leaf replaced by {"__tensor__": key, "kind": ...}

Dicts with non-string keys (optimizer state dicts use int parameter ids) are stored as
{"__items__": [[key, value], ...]}; tuples come back as lists. The directory is written under a
temporary name next to the target and renamed into place, so a reader never sees a partial state.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from safetensors.torch import load_file, save_file


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling directory to fill; on success it replaces ``target`` in one rename (an
    existing ``target`` is moved aside first and removed after), on failure it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.rename(target, old / "previous")
            os.rename(tmp, target)
            shutil.rmtree(old)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

TENSORS_FILE = "tensors.safetensors"
STATE_FILE = "state.json"
_MARK_TENSOR = "__tensor__"
_MARK_ITEMS = "__items__"


def _unique_key(path: str, tensors: dict) -> str:
    # Dotted paths are readable but not unique ({"a": {"b": x}} vs {"a.b": x}); state.json holds the
    # real structure, so a suffix on a clash is enough.
    key = path or "root"
    return key if key not in tensors else f"{key}#{len(tensors)}"


def _encode(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        key = _unique_key(path, tensors)
        # clone: safetensors refuses views sharing storage (e.g. tied or sliced tensors)
        tensors[key] = value.detach().cpu().contiguous().clone()
        return {_MARK_TENSOR: key, "kind": "torch"}
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise TypeError(f"save_state: object array at {path!r} cannot be stored without pickle")
        key = _unique_key(path, tensors)
        tensors[key] = torch.from_numpy(np.ascontiguousarray(value).copy())
        return {_MARK_TENSOR: key, "kind": "numpy"}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            for k in value:
                if k.startswith("__") and k.endswith("__"):
                    raise ValueError(f"save_state: key {k!r} at {path!r} is reserved")
            return {k: _encode(v, f"{path}.{k}" if path else k, tensors) for k, v in value.items()}
        items = []
        for k, v in value.items():
            if not isinstance(k, (int, float, bool, str)) and k is not None:
                raise TypeError(f"save_state: unsupported dict key {k!r} at {path!r}")
            items.append([k, _encode(v, f"{path}.{k}" if path else str(k), tensors)])
        return {_MARK_ITEMS: items}
    if isinstance(value, (list, tuple)):
        return [_encode(v, f"{path}.{i}" if path else str(i), tensors) for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"save_state: unsupported value of type {type(value).__name__} at {path!r}")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if _MARK_TENSOR in value:
            tensor = tensors[value[_MARK_TENSOR]]
            return tensor.numpy() if value["kind"] == "numpy" else tensor
        if _MARK_ITEMS in value:
            return {k: _decode(v, tensors) for k, v in value[_MARK_ITEMS]}
        return {k: _decode(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    return value


def save_state(directory: str | os.PathLike, state_dict: dict) -> None:
    """Write ``state_dict`` to ``directory`` atomically (replacing an existing one)."""
    target = Path(directory)
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state_dict, "", tensors)
    with atomic_directory(target) as tmp:
        save_file(tensors, str(tmp / TENSORS_FILE))
        (tmp / STATE_FILE).write_text(json.dumps(tree, indent=1))


def load_state(directory: str | os.PathLike) -> dict:
    """Inverse of ``save_state``: numpy arrays come back as numpy, tensors as (CPU) torch tensors."""
    directory = Path(directory)
    if not (directory / STATE_FILE).is_file():
        raise FileNotFoundError(f"{directory} is not a saved state (no {STATE_FILE}); was it written by save_state?")
    tree = json.loads((directory / STATE_FILE).read_text())
    tensors = load_file(str(directory / TENSORS_FILE))
    return _decode(tree, tensors)
