"""docs/design.md, "Adding a mixer": its steps, applied block by block to a copy of the repository, give a mixer
that the run config selects and the trainer's own entry point (neox.training.mixing.build_run_mixer) builds.

Each code block of the section starts with one line saying where it goes:
    # new file: PATH
    # in PATH, after the line: ANCHOR          (the anchor must occur exactly once)
    # in PATH, append to the tuple NAME:       (the block is the item to append)
The test fails when a block cannot be applied (the code it edits moved) or the result does not work.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "design.md"

pytestmark = pytest.mark.launches  # one python subprocess imports the edited copy

NEW_FILE = re.compile(r"^# new file: (\S+)$")
AFTER_LINE = re.compile(r"^# in (\S+), after the line: (.+)$")
APPEND_TUPLE = re.compile(r"^# in (\S+), append to the tuple (\w+):$")

CHECK = r"""
import json, sys
from pathlib import Path
import numpy as np
tree = Path(sys.argv[1])
import acodm, neox
assert Path(acodm.__file__).resolve().is_relative_to(tree) and Path(neox.__file__).resolve().is_relative_to(tree)
from acodm.mixers import MIXERS, StepStats
from acodm.serialization import load_state, save_state
from neox.config import load_config
from neox.training.mixing import build_run_mixer

cfg = load_config(tree / sys.argv[2])
domains = ["a", "b", "c"]
mixer = build_run_mixer(cfg, domains, manifest={"splits": {}})
assert type(mixer) is MIXERS[cfg.mixing.method][1], type(mixer)
initial = mixer.weights()
tokens = np.array([256.0, 128.0, 0.0])  # domain c absent
for step in (1, 2):
    mixer.observe(StepStats(step, 10, np.array([2.0, 4.0, 0.0]) * tokens, tokens, tokens / 128))
weights = mixer.weights()
assert abs(weights.sum() - 1) < 1e-9 and (weights >= mixer.floor).all(), weights
save_state(tree / "mixer_state", mixer.state_dict())
again = build_run_mixer(cfg, domains, manifest={"splits": {}})
again.load_state_dict(load_state(tree / "mixer_state"))
assert np.array_equal(again.weights(), weights)
tokens = np.array([128.0, 128.0, 128.0])
stats = StepStats(3, 10, np.array([1.0, 2.0, 3.0]) * tokens, tokens, tokens / 128)
mixer.observe(stats), again.observe(stats)
assert np.array_equal(again.weights(), mixer.weights())
print(json.dumps({"method": cfg.mixing.method, "initial": initial.tolist(), "weights": weights.tolist()}))
"""


def section(text: str, title: str) -> str:
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else len(text)]


def code_blocks(markdown: str) -> list[list[str]]:
    """Fenced blocks (indented ones too), dedented by their fence's indentation, as lists of lines."""
    blocks, current, indent = [], None, 0
    for line in markdown.splitlines():
        stripped = line.lstrip()
        if stripped.startswith("```"):
            if current is None:
                current, indent = [], len(line) - len(stripped)
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            current.append(line[indent:])
    assert current is None, "unclosed code block"
    return blocks


def apply_block(tree: Path, block: list[str]) -> str:
    """Apply one documented step to ``tree``; returns the path it touched."""
    head, body = block[0], block[1:]
    if m := NEW_FILE.match(head):
        path = tree / m.group(1)
        assert not path.exists(), f"{m.group(1)} already exists: the example would overwrite a real file"
        path.write_text("\n".join(body) + "\n")
        return m.group(1)
    if m := AFTER_LINE.match(head):
        path, anchor = tree / m.group(1), m.group(2).strip()
        lines = path.read_text().splitlines()
        hits = [i for i, line in enumerate(lines) if line.strip() == anchor]
        assert len(hits) == 1, f"{m.group(1)}: the anchor line {anchor!r} occurs {len(hits)} times, not once"
        lines[hits[0] + 1:hits[0] + 1] = body
        path.write_text("\n".join(lines) + "\n")
        return m.group(1)
    if m := APPEND_TUPLE.match(head):
        path, name = tree / m.group(1), m.group(2)
        item = "\n".join(body).strip()
        text, count = re.subn(rf"^({name}(?:: [^=]+)? = \(.*?),?\)$", rf"\1, {item})", path.read_text(),
                              count=1, flags=re.M)
        assert count == 1, f"{m.group(1)}: no one-line tuple {name} = (...) to append {item} to"
        path.write_text(text)
        return m.group(1)
    raise AssertionError(f"a code block of 'Adding a mixer' does not say where it goes: {head!r}")


def test_adding_a_mixer_as_documented(tmp_path):
    blocks = code_blocks(section(DOC.read_text(), "Adding a mixer"))
    assert len(blocks) >= 4, "the section lost its code blocks"
    tree = tmp_path / "repo"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("acodm", "neox", "configs"):
        shutil.copytree(ROOT / name, tree / name, ignore=ignore)
    touched = [apply_block(tree, block) for block in blocks]
    configs = [p for p in touched if p.startswith("configs/") and p.endswith((".yml", ".yaml"))]
    assert len(configs) == 1, f"expected one run config among the new files, got {configs}"
    assert any(p.startswith("acodm/mixers/") for p in touched) and "neox/config.py" in touched, touched

    proc = subprocess.run([sys.executable, "-c", CHECK, str(tree), configs[0]], cwd=tree, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(tree)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["method"] not in ("static", "odm", "doge", "doremi", "acodm", "acodm_frozen")
    assert result["weights"] != result["initial"], "the documented mixer never moved its weights"
