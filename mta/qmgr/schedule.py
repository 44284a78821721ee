"""What is delivered when: the active window, the jobs waiting for an agent, the deferred
heap (DESIGN.md §3).

A message is *active* from the moment it is claimed until its result is applied: a file
renamed from ``incoming/`` or ``deferred/`` into ``active/``, or a segment message
(segments.py).  At most ``window`` messages are active at once, so a huge backlog waits on
disk, not in memory.  Each active message has one job, first in :attr:`Scheduler.pending`
until an agent takes it (agents.py).

Deferred messages are ordered by their next try, which is their file's mtime (Postfix's
trick, ``Spool.set_next_try``); the heap mirrors those times and is rebuilt from the
directory on a flush, an operator's change and every full scan.  The file is the truth: a
message whose time was moved later meanwhile is pushed back with its new time, one that
was released, held or deleted is skipped.

Time is an argument (``now``), never read here, so the scheduler is tested without waiting.
"""

from __future__ import annotations

import heapq
import logging
from collections import deque

from mta.protocol.printable import for_log
from mta.qmgr.housekeeping import is_staged, publish_orphans, quarantine
from mta.queue.ids import is_queue_id
from mta.queue.ipc import Job
from mta.queue.msgfile import CorruptMessageFile, read_message_file
from mta.queue.segment import RecordRef
from mta.queue.spool import Spool
from mta.queue.state import StateStore

__all__ = ["ACTIVE_WINDOW", "Scheduler"]

log = logging.getLogger("mta.qmgr")

ACTIVE_WINDOW = 5000  # messages active at once


class Scheduler:
    def __init__(self, spool: Spool, states: StateStore, window: int = ACTIVE_WINDOW) -> None:
        self.spool = spool
        self.states = states
        self.window = window
        self.active: set[str] = set()  # queue IDs in active/ or a segment that we own
        self.pending: deque[Job] = deque()  # jobs no agent has taken yet
        self.deferred: list[tuple[float, str]] = []  # heap of (next try, queue id)
        self.stopping = False  # no job is handed out or retried any more
        self.scan_incoming = True  # look for new files in incoming/ in the next round
        self.rescan_deferred = True  # rebuild the heap from deferred/ in the next round

    def room(self) -> int:
        """How many more messages may become active."""
        return self.window - len(self.active)

    def recover(self) -> None:
        """At start: what was active is scheduled again; the deferred heap is loaded."""
        for queue_id in self.spool.list("active"):
            self.schedule(queue_id)
        self.load_deferred()

    def schedule(self, queue_id: str) -> None:
        """``active/<queue_id>`` is ours: deliver it to the recipients still pending."""
        state = self.states.load(queue_id)
        self.active.add(queue_id)
        self.pending.append(Job(queue_id=queue_id, recipients=state.pending() if state else None))

    def schedule_segment_messages(self, refs: list[RecordRef]) -> None:
        """Claimed segment messages (segments.py): first attempts, to every recipient."""
        for ref in refs:
            queue_id = ref.queue_id
            self.active.add(queue_id)
            job = Job(queue_id=queue_id, segment=ref.segment, offset=ref.offset, length=ref.length)
            self.pending.append(job)

    def claim_incoming(self) -> None:
        """Claim files from ``incoming/``, oldest first, as many as there is room for."""
        self.scan_incoming = False
        room = self.room()
        if room <= 0:
            return
        names = self.spool.list("incoming")
        staged = [name for name in names if is_staged(name)]
        if staged:  # not durable yet (commit.py), unless their writer is gone
            publish_orphans(self.spool, staged)
            names = self.spool.list("incoming")
            names = [name for name in names if not is_staged(name)]
        if len(names) > room:
            self.scan_incoming = True  # the rest when there is room
        for name in names[:room]:
            if not is_queue_id(name):
                quarantine(self.spool, "incoming", name, "not a queue file name", "name")
                continue
            if self._put_on_hold(name):
                continue
            try:
                self.spool.move(name, "incoming", "active")
            except FileNotFoundError:
                continue  # an operator (queue hold/delete) was faster
            self.schedule(name)

    def _put_on_hold(self, queue_id: str) -> bool:
        """A new message whose envelope says ``hold`` (an access table's HOLD) goes to
        ``hold/`` instead of being delivered, until ``mta queue release``.  Only files come
        this way (smtpd gives such a message a file of its own, never a segment record), so
        reading the envelope costs nothing on the path of most mail."""
        try:
            envelope = read_message_file(self.spool.file("incoming", queue_id), False).envelope
        except (CorruptMessageFile, FileNotFoundError):
            return False  # the usual path deals with it (corrupt/, or gone)
        if not envelope.hold:
            return False
        try:
            self.spool.move(queue_id, "incoming", "hold")
        except FileNotFoundError:
            return True
        log.info(
            "%s: hold: from=<%s> client=[%s] (access policy)",
            queue_id,
            for_log(envelope.sender),
            envelope.client_address,
        )
        return True

    def claim_due(self, now: float) -> None:
        """Claim deferred messages whose time has come, earliest first."""
        heap = self.deferred
        while heap and heap[0][0] <= now and len(self.active) < self.window:
            _, queue_id = heapq.heappop(heap)
            try:
                next_try = self.spool.next_try(queue_id)
            except FileNotFoundError:
                continue  # released, held or deleted by an operator
            if next_try > now:
                heapq.heappush(heap, (next_try, queue_id))  # rescheduled meanwhile
                continue
            try:
                self.spool.move(queue_id, "deferred", "active")
            except FileNotFoundError:
                continue
            self.schedule(queue_id)

    def load_deferred(self) -> None:
        """Rebuild the heap from the next-try times in ``deferred/``."""
        self.rescan_deferred = False
        heap = self.spool.deferred_times()
        heapq.heapify(heap)
        self.deferred = heap

    def defer(self, queue_id: str, next_try: float) -> None:
        """``queue_id`` (no longer active) went to ``deferred/``, due at ``next_try``."""
        heapq.heappush(self.deferred, (next_try, queue_id))

    def finished(self, queue_id: str) -> None:
        """The message is no longer active (done, deferred or gone)."""
        self.active.discard(queue_id)

    def retry(self, job: Job) -> bool:
        """Hand ``job`` out again if its message is still ours; True if it was."""
        if job.queue_id in self.active and not self.stopping:
            self.pending.append(job)
            return True
        return False

    def give_back(self, jobs: list[Job]) -> None:
        """Jobs an agent took and never finished (it died): first in line again."""
        for job in jobs:
            self.pending.appendleft(job)
