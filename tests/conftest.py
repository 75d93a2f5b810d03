"""Shared test setup.

Triton kernels run through the Triton interpreter on machines without CUDA; the variable must be
set before triton decorates any kernel, hence here, at collection time.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # tests/cases.py, tests/oracle.py

try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # pragma: no cover - torch is part of the dev setup
    pass


def pytest_collection_modifyitems(session, config, items):
    """Start the long tests (marked ``long_running``) first, so that with ``-n 2`` they run
    beside the rest instead of after it."""
    items.sort(key=lambda item: item.get_closest_marker("long_running") is None)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "long_running: takes about a minute; scheduled first (see conftest)"
    )
