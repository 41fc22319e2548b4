"""acodm is a library boundary: it imports (every submodule) with ``neox`` unavailable."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import importlib, pkgutil, sys

class BlockNeox:
    def find_spec(self, name, path=None, target=None):
        if name == "neox" or name.startswith("neox."):
            raise ImportError("neox is blocked in this test")
        return None

sys.meta_path.insert(0, BlockNeox())
import acodm
names = ["acodm"] + [m.name for m in pkgutil.walk_packages(acodm.__path__, "acodm.")]
for name in names:
    importlib.import_module(name)
assert not any(m == "neox" or m.startswith("neox.") for m in sys.modules), "neox was imported"
for required in ("acodm.mixers", "acodm.rl.ddpg", "acodm.state", "acodm.actor_export", "acodm.serialization"):
    assert required in names, required
print(len(names))
"""


def test_acodm_imports_without_neox():
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) >= 10
