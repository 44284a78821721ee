"""Following the segments smtpd appends small messages to (mta/queue/segment.py).

The tracker keeps one :class:`~mta.queue.segment.SegmentTail` per segment file, oldest
first, reads the records committed since the last round, and knows which of its messages
are live (handed out, not yet done) and where each active one is (:attr:`located`).

Invariants:

* only committed records are handed out: a tail reads up to the committed length its
  writer announced (:meth:`announce`, from the wake-ups), up to its end marker once the
  writer started a newer segment, or to the end once its writer is dead (segment.py says
  why each is safe);
* a message is handed out once: an offset marked done (in the ``.done`` file when the
  segment was opened, or by :meth:`done` since) is never claimed again;
* a message that has a file of its own already (:attr:`extracted`, the message files found
  at start) is not delivered from its segment: a crash lost its done mark after it was
  copied out, and the file is the one that counts;
* a span that holds no readable record (damage, or a record a dead writer left cut) is
  copied to ``corrupt/<segment>.<offset>``, logged with its offset and counted in
  ``mta_queue_corrupt_total``; reading goes on at the next good record, so the intact
  messages after it are delivered;
* a segment is deleted only when nothing in it is live and no more can come: its writer
  closed it, or its writer died and it was read to the end after that was noticed;
* no descriptor is held per segment (tails open the file per read), so failed commits or
  many segments cannot exhaust the queue manager's descriptors.

Reading errors that are not damage (EIO, EBADF) are logged and retried next round.
"""

from __future__ import annotations

import logging

from mta import metrics
from mta.qmgr.housekeeping import quarantine
from mta.qmgr.remover import Remover
from mta.queue.ids import is_queue_id, pid_alive, queue_id_time
from mta.queue.segment import DONE_SUFFIX, Damage, RecordRef, SegmentTail
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
        self._announced: dict[str, int] = {}  # committed lengths of segments not yet open

    def note_extracted(self) -> None:
        """At start: remember every message that has a file of its own."""
        for state in STATES[1:]:
            self.extracted.update(self.spool.list(state))

    def knows(self, name: str) -> bool:
        return name in self.tails

    def announce(self, name: str, committed: int) -> None:
        """Segment ``name``'s writer says its first ``committed`` octets are durable."""
        tail = self.tails.get(name)
        if tail is not None:
            tail.announce(committed)
            return
        self._announced[name] = max(committed, self._announced.get(name, 0))
        self.scan_wanted = True

    def open_new(self) -> None:
        """Start following segment files we do not know yet (oldest first)."""
        self.scan_wanted = False
        for name in self.spool.list(SEGMENTS):
            if name in self.tails or name.endswith(DONE_SUFFIX):
                continue
            if not is_queue_id(name):
                quarantine(self.spool, SEGMENTS, name, "not a segment file name", "name")
                continue
            try:
                tail = self.spool.open_segment(name)
            except FileNotFoundError:
                continue
            tail.announce(self._announced.pop(name, 0))
            # a dead writer's segment (found at start) is read to its end at once
            tail.writer_gone = not pid_alive(tail.writer_pid, queue_id_time(name))
            self.tails[name] = tail
            self._writer_moved_on(tail)
        self._announced.clear()  # the rest named files that are gone

    def _writer_moved_on(self, new: SegmentTail) -> None:
        """A writer starts a segment after closing its last one: its older ones may now be
        read up to their end markers (their last announcement may have been lost)."""
        for tail in self.tails.values():
            if tail.writer_pid == new.writer_pid and tail is not new:
                tail.look_for_end = True

    def claim(self, room: int) -> list[RecordRef]:
        """New messages to deliver, at most ``room``, oldest segment first; each is live
        and located from now on."""
        claimed: list[RecordRef] = []
        for tail in self.tails.values():
            if room <= 0:
                break
            if not tail.wants_reading():
                continue
            try:
                refs = tail.read_new(room)
            except OSError as exc:  # not damage in the segment: try again next round
                log.error("segment %s: cannot read: %s", tail.name, exc)
                continue
            finally:
                self._save_damage(tail)
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
        return claimed

    def _save_damage(self, tail: SegmentTail) -> None:
        """Copy what the tail could not read to ``corrupt/`` (rare: done on the loop, at
        most a segment's size), log it with its offset and count it."""
        damage, tail.damage = tail.damage, []
        for span in damage:
            try:
                saved = self.spool.save_segment_damage(span.segment, span.offset, span.length)
            except OSError as exc:
                log.error("segment %s: cannot copy %s to corrupt/: %s", span.segment, span, exc)
                saved = "(not copied)"
            log.error(
                "segment %s: %s at offset %d (%d octets) copied to corrupt/%s%s",
                span.segment,
                span.why,
                span.offset,
                span.length,
                saved,
                _consequence(span),
            )
            metrics.QUEUE_CORRUPT.labels(span.reason).inc()

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
            finished = tail.closed or (tail.writer_gone and tail.caught_up)
            if not finished:
                # if its writer is gone, the next round reads it once more: it may have
                # written before dying
                if (
                    check_writers
                    and not tail.writer_gone
                    and not pid_alive(tail.writer_pid, queue_id_time(name))
                ):
                    tail.writer_gone, tail.caught_up = True, False
                continue
            tail.close()
            del self.tails[name]
            self.remover.drop_segment(name)

    def close(self) -> None:
        for tail in self.tails.values():
            tail.close()


def _consequence(span: Damage) -> str:
    if span.why == "cut record":
        return "; its writer died before it was committed (never acknowledged)"
    return "; reading goes on at the next good record"
