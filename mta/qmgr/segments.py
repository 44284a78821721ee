"""Following the segments smtpd appends small messages to (mta/queue/segment.py).

The tracker keeps one :class:`~mta.queue.segment.SegmentTail` per segment file, oldest
first, reads the records appended since the last round, and knows which of its messages
are live (handed out, not yet done) and where each active one is (:attr:`located`).

Invariants:

* a message is handed out once: an offset marked done (in the ``.done`` file when the
  segment was opened, or by :meth:`done` since) is never claimed again;
* a message that has a file of its own already (:attr:`extracted`, the message files found
  at start) is not delivered from its segment: a crash lost its done mark after it was
  copied out, and the file is the one that counts;
* a segment is deleted only when nothing in it is live and no more can come: its writer
  closed it, or it is damaged (then it goes to ``corrupt/``), or its writer died and it was
  read to the end after that was noticed.

Reading errors that are not damage (EIO, EBADF) are logged and retried next round.
"""

from __future__ import annotations

import logging

from mta.qmgr.housekeeping import quarantine
from mta.qmgr.remover import Remover
from mta.queue.ids import is_queue_id, pid_alive
from mta.queue.segment import DONE_SUFFIX, RecordRef, SegmentTail
from mta.queue.spool import SEGMENTS, STATES, Spool

__all__ = ["SegmentTracker"]

log = logging.getLogger("mta.qmgr")


class SegmentTracker:
    def __init__(self, spool: Spool, remover: Remover) -> None:
        self.spool = spool
        self.remover = remover
        self.tails: dict[str, SegmentTail] = {}  # by name, oldest first
        self.located: dict[str, RecordRef] = {}  # active messages that live in a segment
        self.extracted: set[str] = set()  # message files at start (see the docstring)
        self.scan_wanted = True  # look for new segment files in the next round

    def note_extracted(self) -> None:
        """At start: remember every message that has a file of its own."""
        for state in STATES[1:]:
            self.extracted.update(self.spool.list(state))

    def knows(self, name: str) -> bool:
        return name in self.tails

    def open_new(self) -> None:
        """Start following segment files we do not know yet (oldest first)."""
        self.scan_wanted = False
        for name in self.spool.list(SEGMENTS):
            if name in self.tails or name.endswith(DONE_SUFFIX):
                continue
            if not is_queue_id(name):
                quarantine(self.spool, SEGMENTS, name, "not a segment file name")
                continue
            try:
                self.tails[name] = self.spool.open_segment(name)
            except FileNotFoundError:
                continue

    def claim(self, room: int) -> list[RecordRef]:
        """New messages to deliver, at most ``room``, oldest segment first; each is live
        and located from now on."""
        claimed: list[RecordRef] = []
        for tail in self.tails.values():
            if room <= 0:
                break
            try:
                refs = tail.read_new(room)
            except OSError as exc:  # not damage in the segment: try again next round
                log.error("segment %s: cannot read: %s", tail.name, exc)
                continue
            for ref in refs:
                if ref.offset in tail.done:
                    continue
                if ref.queue_id in self.extracted:
                    self.remover.segment_done(ref, delivered=False)
                    continue
                tail.live.add(ref.offset)
                self.located[ref.queue_id] = ref
                claimed.append(ref)
                room -= 1
            if tail.broken and not tail.live:
                log.error("segment %s: %s; reading stopped there", tail.name, tail.broken)
        return claimed

    def done(self, ref: RecordRef, delivered: bool) -> None:
        """The message at ``ref`` is done with: delivered, or copied into a file."""
        self.located.pop(ref.queue_id, None)
        tail = self.tails.get(ref.segment)
        if tail is not None:
            tail.live.discard(ref.offset)
        self.remover.segment_done(ref, delivered)

    def retire(self, check_writers: bool) -> None:
        """Delete segments that are closed (or whose writer died) and hold nothing live;
        ``check_writers``: see whether the writers of open ones still run."""
        for name, tail in list(self.tails.items()):
            if tail.live:
                continue
            finished = tail.closed or tail.broken or (tail.writer_gone and tail.caught_up)
            if not finished:
                if check_writers and not tail.writer_gone:
                    # the next round reads it once more: it may have written before dying
                    tail.writer_gone = not pid_alive(tail.writer_pid)
                continue
            tail.close()
            del self.tails[name]
            if tail.broken:
                quarantine(self.spool, SEGMENTS, name, tail.broken)
                self.remover.drop_segment(name, keep=True)
            else:
                self.remover.drop_segment(name)

    def close(self) -> None:
        for tail in self.tails.values():
            tail.close()
