"""The prometheus-client multiprocess directory, owned by the master.

It must be set in the environment before ``prometheus_client`` is first imported (the
library picks its value class at import), so ``mta serve`` calls :func:`prepare` first.
A directory we made ourselves (no ``PROMETHEUS_MULTIPROC_DIR`` given) is ours to remove
when the master exits (:func:`remove`); one the operator named is only wiped at start.
"""

from __future__ import annotations

import os
import shutil
import tempfile

__all__ = ["prepare", "remove"]

_created: str | None = None  # the temporary directory prepare() made, if it made one


def prepare() -> str:
    """Point PROMETHEUS_MULTIPROC_DIR at an empty directory (wiping old files) and return it."""
    global _created
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        shutil.rmtree(path, ignore_errors=True)
    else:
        path = _created = tempfile.mkdtemp(prefix="mta-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    os.makedirs(path, exist_ok=True)
    return path


def remove() -> None:
    """Delete the directory if :func:`prepare` created it (every child has exited by now)."""
    global _created
    if _created is not None:
        shutil.rmtree(_created, ignore_errors=True)
        _created = None
