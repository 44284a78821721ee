"""The queue manager's housekeeping: what no message asks for, but the spool needs.

* ``tmp/``: a file is a message still being written by the process named in its queue ID
  (ids.py), or a leftover of one that died (it was never acknowledged, so removing it loses
  nothing).  Leftovers whose writer is gone, and anything older than :data:`TMP_MAX_AGE`,
  are removed at start and on every full scan.  Dot files are not writers' files: they are
  the queue manager's own copies out of a segment (``.copy-ID``), removed at start only,
  where one can only be a copy a crash cut short.
* Names that are not queue IDs and unreadable messages are moved to ``corrupt/``
  (:func:`quarantine`), never deleted, logged as errors and counted in
  ``mta_queue_corrupt_total`` by reason (damaged segment spans: segments.py).
* ``incoming/.ID`` is a large message whose commit was under way (commit.py): left alone
  while its writer lives; once it is gone, the file was either acknowledged or never
  answered, so it is published (:func:`publish_orphans`): a duplicate at worst, never a
  loss.
* Queue depth per state and the age of the oldest message are published as metrics.

All of it goes through :class:`~mta.queue.spool.Spool`; nothing here knows a path.
"""

from __future__ import annotations

import logging

from mta import metrics
from mta.queue.ids import is_queue_id, queue_id_time, writer_alive
from mta.queue.spool import COPY_PREFIX, STAGED_PREFIX, STATES, Spool

__all__ = [
    "TMP_MAX_AGE",
    "clean_tmp",
    "count_queue",
    "is_staged",
    "publish_orphans",
    "quarantine",
    "quarantine_strangers",
    "remove_copy_leftovers",
]

log = logging.getLogger("mta.qmgr")

TMP_MAX_AGE = 86400.0  # seconds: a file in tmp/ older than this is a leftover, whoever wrote it
_MESSAGE_STATES = ("incoming", "active", "deferred", "hold")  # where only queue IDs belong


def quarantine(spool: Spool, state: str, name: str, why: str, reason: str = "format") -> None:
    """Move ``name`` from ``state`` to ``corrupt/``, say why and count it under
    ``reason`` (if it is still there)."""
    if spool.to_corrupt(state, name):
        log.error("%s: moved to corrupt/: %s", name, why)
        metrics.QUEUE_CORRUPT.labels(reason).inc()


def quarantine_strangers(spool: Spool) -> None:
    """Names in the message states that are not queue IDs go to ``corrupt/``."""
    for state in _MESSAGE_STATES:
        for name in spool.list(state):
            if state == "incoming" and is_staged(name):
                continue
            if not is_queue_id(name):
                quarantine(spool, state, name, "not a queue file name", "name")


def is_staged(name: str) -> bool:
    """``incoming/.ID``: a large message whose commit is (or was) under way."""
    return name.startswith(STAGED_PREFIX) and is_queue_id(name[len(STAGED_PREFIX) :])


def publish_orphans(spool: Spool, names: list[str]) -> None:
    """Give staged files of ``incoming/`` (``names``) whose writer is gone their name."""
    for name in names:
        queue_id = name[len(STAGED_PREFIX) :]
        if is_staged(name) and not writer_alive(queue_id):
            try:
                spool.publish_incoming(queue_id)
                log.warning("%s: its writer died while committing it; queued", queue_id)
            except FileNotFoundError:
                continue


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
