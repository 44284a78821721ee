"""Group commit: make finished messages durable in batches, off the event loop.

A ``250`` after DATA promises that the message survives a crash, so the file and the
directory entry that makes it visible in ``incoming/`` must be on stable storage first.
A flush costs about a millisecond here whatever it carries, so one thread per worker takes
*every* message that finished since its last flush and makes them durable together:

* ``sync = "syncfs"`` (default): rename each file into ``incoming/``, then one ``syncfs(2)``
  of the spool's file system writes all their data and directory entries in one journal
  commit.  A file whose data was lost in a power cut before the flush was never
  acknowledged; its trailer is missing and the queue manager moves it to ``corrupt/``.
* ``sync = "fsync"``: ``fsync`` each file, rename it, then one ``fsync`` of ``incoming/``
  for the batch (the classic per-file discipline, slower, for file systems where syncfs is
  not available or flushes too much).

There is no waiting for company: a lone message is flushed at once, and messages that
finish while a flush runs form the next batch (bounded by ``max_batch``).  Results go back
to the event loop with one ``call_soon_threadsafe`` per batch.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import fcntl
import logging
import os
import struct
import time
from collections.abc import Callable

from mta.queue.batches import BatchThread
from mta.queue.ipc import send_wakeup
from mta.queue.spool import MessageWriter, Spool

__all__ = ["GroupCommitter", "SyncGate", "syncfs"]

log = logging.getLogger("mta.queue")

Done = Callable[[OSError | None], None]

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_syncfs = getattr(_libc, "syncfs", None)


def syncfs(fd: int) -> None:
    """Flush the whole file system holding ``fd`` (Linux syncfs(2))."""
    if _syncfs is None:
        os.sync()
        return
    if _syncfs(fd) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


class SyncGate:
    """Lets the committers of every smtpd worker share ``syncfs`` calls.

    ``syncfs`` flushes everything written before it started.  So a committer whose renames
    finished at time *t* need not flush at all if another process began a flush after *t*
    and completed it.  One flush at a time runs under an ``flock`` on ``spool/.syncgate``,
    whose first 8 octets hold the CLOCK_MONOTONIC start time of the last completed flush;
    a committer waiting for the lock usually finds that the flush it waited for covered its
    batch too, so N workers cost about one flush per round, not N.
    """

    def __init__(self, spool_path: str) -> None:
        self.fd = os.open(os.path.join(spool_path, ".syncgate"), os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self.fd).st_size < 8:
            os.pwrite(self.fd, bytes(8), 0)
        self.shared = 0  # flushes we skipped because another process did them

    def flush(self, since_ns: int, fd: int) -> None:
        """Make everything written before ``since_ns`` durable, by us or by another."""
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            (last_start,) = _STAMP.unpack(os.pread(self.fd, 8, 0))
            if last_start >= since_ns:
                self.shared += 1
                return
            start = time.monotonic_ns()
            syncfs(fd)
            os.pwrite(self.fd, _STAMP.pack(start), 0)
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self.fd)


_STAMP = struct.Struct("<q")


class GroupCommitter:
    """One flushing thread; ``submit`` from the event loop, callbacks run on the loop."""

    def __init__(
        self,
        spool: Spool,
        loop: asyncio.AbstractEventLoop,
        mode: str = "syncfs",
        max_batch: int = 1024,
    ) -> None:
        self.spool = spool
        self.loop = loop
        self.mode = mode
        self.max_batch = max_batch
        self.batches = 0  # flushes done (for metrics and tests)
        self.committed = 0  # messages made durable
        self._incoming_fd = os.open(spool.dir("incoming"), os.O_RDONLY | os.O_DIRECTORY)
        self._gate = SyncGate(spool.path)
        self._worker: BatchThread[tuple[MessageWriter, Done]] = BatchThread(
            self._commit, "group-commit", max_batch
        )

    def submit(self, writer: MessageWriter, done: Done) -> None:
        """Queue a finished message; ``done(None)`` once it is durable in ``incoming/``."""
        self._worker.put((writer, done))

    def stop(self) -> None:
        """Flush what is queued, then end the thread."""
        self._worker.stop()
        os.close(self._incoming_fd)
        self._gate.close()

    def _commit(self, batch: list[tuple[MessageWriter, Done]]) -> bool:
        """One round in the thread: flush the batch and report to the loop."""
        errors = self._flush(batch)
        try:
            self.loop.call_soon_threadsafe(self._report, batch, errors)
        except RuntimeError:  # the loop is closed: nobody is waiting for an answer
            return False
        if any(e is None for e in errors):
            send_wakeup(self.spool.path)  # the queue manager picks them up at once
        return True

    def _flush(self, batch: list[tuple[MessageWriter, Done]]) -> list[OSError | None]:
        """Make the batch durable; one error (or None) per message, in order.

        A message whose own fsync or rename failed gets its own error.  If the final
        flush fails, nothing in the batch is known to be durable and every message gets
        the error (the client will retry; a duplicate is possible, a loss is not).
        """
        errors: list[OSError | None] = []
        for writer, _ in batch:
            try:
                writer.persist(sync=self.mode == "fsync")
                self.spool.move(writer.queue_id, "tmp", "incoming")
                errors.append(None)
            except OSError as exc:
                log.error("%s: cannot queue the message: %s", writer.queue_id, exc)
                errors.append(exc)
        renamed_at = time.monotonic_ns()
        try:
            if self.mode == "fsync":
                os.fsync(self._incoming_fd)
            else:
                self._gate.flush(renamed_at, self._incoming_fd)
        except OSError as exc:
            log.error("queue flush failed for %d messages: %s", len(batch), exc)
            return [exc] * len(batch)
        self.batches += 1
        self.committed += errors.count(None)
        return errors

    @staticmethod
    def _report(batch: list[tuple[MessageWriter, Done]], errors: list[OSError | None]) -> None:
        for (_, done), error in zip(batch, errors, strict=True):
            done(error)
