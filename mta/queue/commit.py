"""Group commit: make finished messages durable in batches, off the event loop.

A ``250`` after DATA promises that the message survives a crash, so it must be on stable
storage first.  A flush costs about a millisecond here whatever it carries, so one thread
per worker takes *every* message that finished since its last flush and makes them durable
together:

* small messages (held in memory while they arrived) are appended to the worker's segment
  with one ``write`` and made durable with one ``fdatasync`` (segment.py): no file is
  created, renamed or deleted per message;
* a large message was streamed into its own file in ``tmp/``: it is fsynced and renamed
  into ``incoming/`` under a dot name (``.ID``, which the queue manager leaves alone while
  its writer lives), one fsync of ``incoming/`` covers every such rename of the batch, and
  only then is each renamed to its queue ID.  So the queue manager never claims a file
  whose directory entry is not yet durable, and a file whose flush failed is removed
  before its client hears ``451``.

Nothing is delivered before it is durable: the segment reader reads no further than the
committed length the writer announces (``SegmentAppended``, after every commit and every
:data:`ANNOUNCE_SECONDS` while the worker runs, so that a lost datagram or a restarted
queue manager costs a second), and a failed segment batch is cut off before its clients
are answered (segment.py).

There is no waiting for company: a lone message is flushed at once, and messages that
finish while a flush runs form the next batch (bounded by ``max_batch``).  Results go back
to the event loop with one ``call_soon_threadsafe`` per batch.

An earlier version flushed per-message files with one ``syncfs(2)`` per batch.  Its cost
grew with everything else written to the file system (another writer's data was flushed
too), and the kernel spent up to half a millisecond of CPU per message on it under load;
appending to a segment costs neither.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable

from mta import metrics
from mta.queue import durable
from mta.queue.batches import BatchThread
from mta.queue.ipc import Queued, SegmentAppended, Waker
from mta.queue.segment import SegmentWriter
from mta.queue.spool import SEGMENTS, MessageWriter, Spool

__all__ = ["ANNOUNCE_SECONDS", "GroupCommitter"]

log = logging.getLogger("mta.queue")

ANNOUNCE_SECONDS = 1.0  # the committed length is announced again this often (the poll's pace)

Done = Callable[[OSError | None], None]


class GroupCommitter:
    """One flushing thread; ``submit`` from the event loop, callbacks run on the loop."""

    def __init__(
        self, spool: Spool, loop: asyncio.AbstractEventLoop, max_batch: int = 1024
    ) -> None:
        self.spool = spool
        self.loop = loop
        self.max_batch = max_batch
        self.batches = 0  # flushes done (for metrics and tests)
        self.committed = 0  # messages made durable
        self._incoming_fd = os.open(spool.dir("incoming"), os.O_RDONLY | os.O_DIRECTORY)
        self._segment = SegmentWriter(spool.dir(SEGMENTS))
        self._waker = Waker(spool.path)  # used from the thread only
        self._loop_waker = Waker(spool.path)  # used from the event loop only
        self._announced: SegmentAppended | None = None  # the last commit's, set by the thread
        self._reannounce_handle = loop.call_later(ANNOUNCE_SECONDS, self._reannounce)
        self._worker: BatchThread[tuple[MessageWriter, Done]] = BatchThread(
            self._commit, "group-commit", max_batch
        )

    def submit(self, writer: MessageWriter, done: Done) -> None:
        """Queue a finished message; ``done(None)`` once it is durable in the queue."""
        self._worker.put((writer, done))

    def stop(self) -> None:
        """Flush what is queued, then end the thread."""
        self._reannounce_handle.cancel()
        self._worker.stop()
        os.close(self._incoming_fd)
        self._segment.close()
        self._waker.close()
        self._loop_waker.close()

    def _reannounce(self) -> None:
        """Say the committed length again (on the loop): the queue manager may have missed
        the datagram, or started since."""
        announced = self._announced  # one object, replaced whole by the thread
        if announced is not None:
            self._loop_waker.send(announced)
        self._reannounce_handle = self.loop.call_later(ANNOUNCE_SECONDS, self._reannounce)

    def _commit(self, batch: list[tuple[MessageWriter, Done]]) -> bool:
        """One round in the thread: flush the batch and report to the loop."""
        started = time.monotonic()
        errors = self._flush(batch)
        metrics.COMMIT_SECONDS.observe(time.monotonic() - started)
        try:
            self.loop.call_soon_threadsafe(self._report, batch, errors)
        except RuntimeError:  # the loop is closed: nobody is waiting for an answer
            return False
        queued = [writer for (writer, _), error in zip(batch, errors, strict=True) if error is None]
        # the queue manager picks them up at once (and opens a segment it did not know)
        if any(writer.in_memory for writer in queued):
            self._announced = SegmentAppended(self._segment.name, self._segment.committed)
            self._waker.send(self._announced)
        if any(not writer.in_memory for writer in queued):
            self._waker.send(Queued())
        return True

    def _flush(self, batch: list[tuple[MessageWriter, Done]]) -> list[OSError | None]:
        """Make the batch durable; one error (or None) per message, in order.

        A message whose own write failed gets its own error.  If a flush fails, nothing it
        covered is known to be durable and each of those messages gets the error (the
        client will retry; a duplicate is possible, a loss is not).
        """
        errors: list[OSError | None] = [None] * len(batch)
        in_segment: list[int] = []
        in_files: list[int] = []
        for i, (writer, _) in enumerate(batch):
            if writer.in_memory:
                in_segment.append(i)
                continue
            try:
                writer.persist(sync=True)
                self.spool.stage_incoming(writer.queue_id)
                in_files.append(i)
            except OSError as exc:
                log.error("%s: cannot queue the message: %s", writer.queue_id, exc)
                errors[i] = exc
        if in_files:
            self._publish_files([batch[i][0].queue_id for i in in_files], in_files, errors)
        if in_segment:
            try:
                self._segment.commit(b"".join([batch[i][0].record() for i in in_segment]))
            except OSError as exc:
                log.error("queue segment write failed for %d messages: %s", len(in_segment), exc)
                for i in in_segment:
                    errors[i] = exc
        self.batches += 1
        self.committed += errors.count(None)
        return errors

    def _publish_files(
        self, ids: list[str], indexes: list[int], errors: list[OSError | None]
    ) -> None:
        """Make the staged files' entries durable, then give them their names; a file
        that did not make it is removed (its client hears ``451`` and sends it again)."""
        try:
            durable.fsync(self._incoming_fd)
        except OSError as exc:
            log.error("queue flush failed for %d messages: %s", len(ids), exc)
            for queue_id, i in zip(ids, indexes, strict=True):
                errors[i] = exc
                self.spool.unstage_incoming(queue_id)
            return
        for queue_id, i in zip(ids, indexes, strict=True):
            try:
                self.spool.publish_incoming(queue_id)
            except OSError as exc:
                log.error("%s: cannot queue the message: %s", queue_id, exc)
                errors[i] = exc
                self.spool.unstage_incoming(queue_id)

    @staticmethod
    def _report(batch: list[tuple[MessageWriter, Done]], errors: list[OSError | None]) -> None:
        for (_, done), error in zip(batch, errors, strict=True):
            done(error)
