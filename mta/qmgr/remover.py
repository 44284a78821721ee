"""Removing delivered messages in a thread of the queue manager's own.

An ``unlink`` must join the file system's running journal transaction; while smtpd's group
commit flushes, that wait can take a millisecond, and the queue manager's event loop must
not stall on it.  The same goes for the done marks of segment messages (segment.py), which
are appended to ``<segment>.done``, and for deleting a segment once all of it is done.

None of this needs a flush: a removal or a mark lost in a crash means the message is
delivered once more (a duplicate, never a loss).  So the thread just works through what it
is handed, in order, and logs each removal as Postfix's qmgr does.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass

from mta import metrics
from mta.queue.batches import BatchThread
from mta.queue.segment import RecordRef, encode_done
from mta.queue.spool import Spool

__all__ = ["DropSegment", "MarkDone", "RemoveFile", "Remover"]

log = logging.getLogger("mta.qmgr")


@dataclass(frozen=True, slots=True)
class RemoveFile:
    """Every recipient of ``queue_id`` is done: delete its file from ``active/``."""

    queue_id: str


@dataclass(frozen=True, slots=True)
class MarkDone:
    """The segment message ``ref`` is done: ``delivered``, or copied out to a file."""

    ref: RecordRef
    delivered: bool


@dataclass(frozen=True, slots=True)
class DropSegment:
    """Everything in segment ``name`` is done: delete it (``keep``: it was moved to
    ``corrupt/``; only its done marks go)."""

    name: str
    keep: bool = False


Removal = RemoveFile | MarkDone | DropSegment


class Remover:
    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self._done_files: dict[str, int] = {}  # segment name → open .done file (the thread's)
        self._delivered = 0  # removals in the batch at hand
        self._pending: list[Removal] = []  # not yet handed to the thread
        self._worker: BatchThread[Removal] = BatchThread(self._handle, "qmgr-remove")

    def remove(self, queue_id: str) -> None:
        """Every recipient of ``queue_id`` is done: delete its file from ``active/``."""
        self._put(RemoveFile(queue_id))

    def segment_done(self, ref: RecordRef, delivered: bool) -> None:
        """The segment message ``ref`` is done: delivered, or copied out to a file."""
        self._put(MarkDone(ref, delivered))

    def drop_segment(self, name: str, keep: bool = False) -> None:
        """Everything in segment ``name`` is done: delete it (``keep``: it was moved to
        ``corrupt/``; only its done marks go)."""
        self._put(DropSegment(name, keep))

    def _put(self, item: Removal) -> None:
        """Gather what one turn of the event loop hands over and wake the thread once:
        waking it per message costs the loop a GIL hand-over each time."""
        self._pending.append(item)
        if len(self._pending) > 1:
            return
        try:
            asyncio.get_running_loop().call_soon(self._hand_over)
        except RuntimeError:  # no loop (recovery, tests): at once
            self._hand_over()

    def _hand_over(self) -> None:
        items, self._pending = self._pending, []
        if items:
            self._worker.put_many(items)

    def stop(self) -> None:
        """Finish what was handed over, then end the thread."""
        self._hand_over()
        self._worker.stop()
        for fd in self._done_files.values():
            os.close(fd)
        self._done_files.clear()

    def _handle(self, batch: list[Removal]) -> None:
        marks: dict[str, list[int]] = {}
        delivered: list[str] = []  # logged once their marks are written
        self._delivered = 0
        for item in batch:
            if isinstance(item, MarkDone):  # the common case first
                marks.setdefault(item.ref.segment, []).append(item.ref.offset)
                if item.delivered:
                    delivered.append(item.ref.queue_id)
            elif isinstance(item, RemoveFile):
                self._unlink(item.queue_id)
            else:  # the marks first: a segment's marks go with it
                self._write_marks(marks)
                self._drop(item.name, keep=item.keep)
        self._write_marks(marks)
        for queue_id in delivered:
            self._removed(queue_id)
        if self._delivered:  # one multiprocess increment per batch, not per message
            metrics.MESSAGES_DELIVERED.inc(self._delivered)

    def _unlink(self, queue_id: str) -> None:
        try:
            self.spool.remove("active", queue_id)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.error("%s: cannot remove the delivered message: %s", queue_id, exc)
            return
        self._removed(queue_id)

    def _removed(self, queue_id: str) -> None:
        self._delivered += 1
        log.info("%s: removed", queue_id, extra={"queue_id": queue_id})

    def _write_marks(self, marks: dict[str, list[int]]) -> None:
        for segment, offsets in marks.items():
            fd = self._done_files.get(segment)
            try:
                if fd is None:
                    fd = self.spool.open_done_marks(segment)
                    self._done_files[segment] = fd
                os.write(fd, encode_done(offsets))
            except OSError as exc:  # the marks are lost: those messages go out again later
                log.error("segment %s: cannot record delivered messages: %s", segment, exc)
        marks.clear()

    def _drop(self, name: str, keep: bool) -> None:
        fd = self._done_files.pop(name, None)
        if fd is not None:
            os.close(fd)
        for exc in self.spool.remove_segment(name, keep_data=keep):
            log.error("cannot remove %s: %s", exc.filename, exc)
