"""The prometheus-client multiprocess directory, owned by the master.

It must be set in the environment before ``prometheus_client`` is first imported (the
library picks its value class at import), so ``mta serve`` calls :func:`prepare` first.
A directory we made ourselves (no ``PROMETHEUS_MULTIPROC_DIR`` given) is ours to remove
when the master exits (:func:`remove`), and one left by a master that was killed is removed
by the next one (tempdirs.py); one the operator named is only wiped at start.  Either way
it is mode 0700, and the master gives it to the children's account (privileges.py).
"""

from __future__ import annotations

import os
import shutil

from mta.master import tempdirs

__all__ = ["path", "prepare", "remove"]

MODE = 0o700
_created: str | None = None  # the temporary directory prepare() made, if it made one


def prepare() -> str:
    """Point PROMETHEUS_MULTIPROC_DIR at an empty directory (wiping old files) and return it."""
    global _created
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        shutil.rmtree(given, ignore_errors=True)
        os.makedirs(given, MODE, exist_ok=True)
        os.chmod(given, MODE)  # explicit: makedirs' mode passes through the umask
        return given
    tempdirs.remove_stale("metrics")
    _created = tempdirs.create("metrics")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _created
    return _created


def path() -> str | None:
    """The directory in use (None before :func:`prepare`)."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR")


def remove() -> None:
    """Delete the directory if :func:`prepare` created it (every child has exited by now)."""
    global _created
    if _created is not None:
        shutil.rmtree(_created, ignore_errors=True)
        _created = None
