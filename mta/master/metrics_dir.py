"""The prometheus-client multiprocess directory, owned by the master.

It must be set in the environment before ``prometheus_client`` is first imported (the
library picks its value class at import), so ``mta serve`` calls :func:`prepare` first.
"""

from __future__ import annotations

import os
import shutil
import tempfile

__all__ = ["prepare"]


def prepare() -> str:
    """Point PROMETHEUS_MULTIPROC_DIR at an empty directory (wiping old files) and return it."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        shutil.rmtree(path, ignore_errors=True)
    else:
        path = tempfile.mkdtemp(prefix="mta-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    os.makedirs(path, exist_ok=True)
    return path
