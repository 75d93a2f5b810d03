"""`import crossent` needs NumPy and array-api-compat only; extras load lazily."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"})


BLOCK_TORCH = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'triton', 'sklearn', 'matplotlib', 'scipy'):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
"""


def test_import_needs_no_torch():
    out = run(BLOCK_TORCH + """
import numpy as np, crossent
print(float(crossent.cross_entropy(np.array([2.0, 4.0, 0.5]), np.array(1))))
assert 'torch' not in sys.modules
""")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("0.153178")


def test_missing_extra_names_it():
    out = run(BLOCK_TORCH + """
import crossent
try:
    crossent.nn
except ImportError as e:
    print(e)
""")
    assert out.returncode == 0, out.stderr
    assert "pip install 'crossent[torch]'" in out.stdout


def test_no_import_time_side_effects():
    out = run("""
import sys, os
before = dict(os.environ)
import crossent
assert dict(os.environ) == before
assert 'torch' not in sys.modules and 'triton' not in sys.modules
print('ok')
""")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
