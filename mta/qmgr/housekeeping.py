"""The queue manager's housekeeping: what no message asks for, but the spool needs.

* ``tmp/``: a file is a message still being written by the process named in its queue ID
  (ids.py), or a leftover of one that died (it was never acknowledged, so removing it loses
  nothing).  Leftovers whose writer is gone, and anything older than :data:`TMP_MAX_AGE`,
  are removed at start and on every full scan.  Dot files are not writers' files: they are
  the queue manager's own copies out of a segment (``.copy-ID``), removed at start only,
  where one can only be a copy a crash cut short.
* Names that are not queue IDs, damaged segments and unreadable messages are moved to
  ``corrupt/`` (:func:`quarantine`), never deleted, and logged as errors.
* Queue depth per state and the age of the oldest message are published as metrics.

All of it goes through :class:`~mta.queue.spool.Spool`; nothing here knows a path.
"""

from __future__ import annotations

import logging

from mta import metrics
from mta.queue.ids import is_queue_id, queue_id_time, writer_alive
from mta.queue.spool import COPY_PREFIX, STATES, Spool

__all__ = [
    "TMP_MAX_AGE",
    "clean_tmp",
    "count_queue",
    "quarantine",
    "quarantine_strangers",
    "remove_copy_leftovers",
]

log = logging.getLogger("mta.qmgr")

TMP_MAX_AGE = 86400.0  # seconds: a file in tmp/ older than this is a leftover, whoever wrote it
_MESSAGE_STATES = ("incoming", "active", "deferred", "hold")  # where only queue IDs belong


def quarantine(spool: Spool, state: str, name: str, why: str) -> None:
    """Move ``name`` from ``state`` to ``corrupt/`` and say why (if it is still there)."""
    if spool.to_corrupt(state, name):
        log.error("%s: moved to corrupt/: %s", name, why)


def quarantine_strangers(spool: Spool) -> None:
    """Names in the message states that are not queue IDs go to ``corrupt/``."""
    for state in _MESSAGE_STATES:
        for name in spool.list(state):
            if not is_queue_id(name):
                quarantine(spool, state, name, "not a queue file name")


def clean_tmp(spool: Spool, now: float) -> None:
    """Remove the files in ``tmp/`` whose writer is gone or that are too old."""
    for entry in spool.scan("tmp"):
        name = entry.name
        if name.startswith("."):
            continue
        try:
            age = now - entry.stat().st_mtime
        except FileNotFoundError:
            continue
        if age > TMP_MAX_AGE or (is_queue_id(name) and not writer_alive(name)):
            try:
                spool.remove("tmp", name)
                log.info("removed leftover %s from tmp/", name)
            except FileNotFoundError:
                pass


def remove_copy_leftovers(spool: Spool) -> None:
    """At start: a copy out of a segment (``.copy-ID``) was cut short by a crash; the
    message is still in its segment."""
    for name in spool.list("tmp"):
        if name.startswith(COPY_PREFIX):
            spool.remove("tmp", name)


def count_queue(spool: Spool, in_segments: int, now: float) -> None:
    """Publish queue depth per state (``in_segments`` active messages live in segments)
    and the age of the oldest message."""
    oldest = 0.0
    for state in STATES[1:]:
        names = spool.list(state)
        extra = in_segments if state == "active" else 0
        metrics.QUEUE_DEPTH.labels(state).set(len(names) + extra)
        ids = [n for n in names if is_queue_id(n)]
        if ids and state != "corrupt":
            oldest = max(oldest, now - queue_id_time(ids[0]))
    metrics.QUEUE_OLDEST_AGE.set(oldest)
