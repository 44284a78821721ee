"""The master's directories under the system's temporary directory, and their clean-up.

Each master has ``mta-master-<pid>-*`` (its children's heartbeat files) and, unless the
operator names one, ``mta-metrics-<pid>-*`` (prometheus-client's multiprocess files),
where ``<pid>`` is the master's.  It removes them when it exits; a master killed with -9
cannot, so every master removes, when it starts, those whose owner is dead: the pid in
the name no longer runs.  The directories of a master that runs (another instance) are
never touched, nor those whose name has no pid (made before the pid was put in the name:
whose they are cannot be told).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from glob import glob

from mta.queue.ids import pid_alive

__all__ = ["create", "remove_stale"]

log = logging.getLogger("mta.master")


def create(kind: str) -> str:
    """A new directory ``mta-<kind>-<our pid>-*``, mode 0700 (mkdtemp's, whatever the
    umask: a umask only takes bits away)."""
    return tempfile.mkdtemp(prefix=f"mta-{kind}-{os.getpid()}-")


def remove_stale(kind: str) -> list[str]:
    """Remove the ``kind`` directories left by masters that no longer run; their paths."""
    removed = []
    for path in glob(os.path.join(tempfile.gettempdir(), f"mta-{kind}-*")):
        owner = _owner_pid(os.path.basename(path), kind)
        if owner is None or owner == os.getpid() or pid_alive(owner):
            continue
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if st.st_uid != os.geteuid() and os.geteuid() != 0:
            continue  # another user's: not ours to judge
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    if removed:
        log.info("removed %d %s directories left by masters that were killed", len(removed), kind)
    return removed


def _owner_pid(name: str, kind: str) -> int | None:
    pid, sep, _ = name.removeprefix(f"mta-{kind}-").partition("-")
    return int(pid) if sep and pid.isdigit() else None
