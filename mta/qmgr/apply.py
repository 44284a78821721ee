"""Applying what a delivery agent reports about one job (the queue manager's decisions).

* All recipients sent at the first attempt (the common case): the message is removed, or
  for a segment message only marked done; nothing is read, nothing is saved.
* Otherwise a segment message must outlive this attempt: it is first copied into a file of
  its own in ``active/`` (or into ``corrupt/`` if it cannot be parsed), durably, and only
  then marked done in its segment.  If the copy fails the job is handed out again after
  ``delivery.min_backoff``; the message stays in its segment meanwhile.
* Then the results are recorded (outcome.py): removed, or deferred until the next try.  A
  result that cannot be recorded (or an agent's ``"missing"``/``"internal"`` problem)
  leaves the message deferred for ``min_backoff``; an unreadable one goes to ``corrupt/``.

File work runs in one I/O thread of its own, so the event loop never waits for the disk,
and results of one message never race each other.  A message stops being active only once
its result is applied.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from mta import metrics
from mta.config import Config
from mta.qmgr.housekeeping import quarantine
from mta.qmgr.outcome import Outcome, apply_results
from mta.qmgr.remover import Remover
from mta.qmgr.schedule import Scheduler
from mta.qmgr.segments import SegmentTracker
from mta.queue.ipc import Job, Result
from mta.queue.msgfile import CorruptMessageFile, parse_message_bytes
from mta.queue.segment import RecordRef
from mta.queue.spool import Spool
from mta.queue.state import StateStore

__all__ = ["ResultApplier", "all_done_at_first_try"]

log = logging.getLogger("mta.qmgr")


def all_done_at_first_try(result: Result, job: Job) -> bool:
    """First attempt (so no state file exists) and every recipient was sent, with no
    success notice due (NOTIFY=SUCCESS needs the message read, so it takes the long way)."""
    return (
        job.recipients is None
        and not result.problem
        and bool(result.results)
        and all(r.status == "sent" and not r.success_action for r in result.results)
    )


class ResultApplier:
    def __init__(
        self,
        config: Config,
        spool: Spool,
        states: StateStore,
        scheduler: Scheduler,
        segments: SegmentTracker,
        remover: Remover,
        wake: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.spool = spool
        self.states = states
        self.scheduler = scheduler
        self.segments = segments
        self.remover = remover
        self.wake = wake
        self.clock = clock
        self._io = ThreadPoolExecutor(1, thread_name_prefix="qmgr-io")

    def close(self) -> None:
        """Wait for the file work under way."""
        self._io.shutdown(wait=True)

    async def apply(self, result: Result, job: Job) -> None:
        queue_id = result.queue_id
        ref = self.segments.located.get(queue_id) if job.segment else None
        if all_done_at_first_try(result, job):
            if ref is not None:
                self.segments.done(ref, delivered=True)
            else:
                self.remover.remove(queue_id)
            self.scheduler.finished(queue_id)
            self.wake()
            return
        if ref is not None and not await self._keep(ref, job):
            return
        await self._record(result)

    async def _keep(self, ref: RecordRef, job: Job) -> bool:
        """Give a segment message a file of its own; False if there is nothing to record
        now (the copy failed and is retried, or the message was unreadable)."""
        loop = asyncio.get_running_loop()
        try:
            kept = await loop.run_in_executor(self._io, self._extract, ref)
        except OSError as exc:
            log.error("%s: cannot copy the message out of its segment: %s", ref.queue_id, exc)
            loop.call_later(self.config.delivery.min_backoff, self._retry, job)
            return False
        self.segments.done(ref, delivered=False)
        if not kept:
            self.scheduler.finished(ref.queue_id)
        return kept

    async def _record(self, result: Result) -> None:
        queue_id = result.queue_id
        loop = asyncio.get_running_loop()
        try:
            outcome = await loop.run_in_executor(self._io, self._record_sync, result)
        except OSError as exc:
            log.error("%s: cannot record the delivery result: %s; will retry", queue_id, exc)
            outcome = None
        self.scheduler.finished(queue_id)
        if outcome is None:
            self._defer_unrecorded(queue_id)
        else:
            if not outcome.removed:
                self.scheduler.defer(queue_id, outcome.next_try)
            if outcome.bounce_id:
                self.scheduler.scan_incoming = True  # the bounce waits in incoming/
        self.wake()

    def _retry(self, job: Job) -> None:
        if self.scheduler.retry(job):
            self.wake()

    def _extract(self, ref: RecordRef) -> bool:
        """Copy a segment message into ``active/`` (durably); False if it was unreadable
        and went to ``corrupt/`` instead.  Runs in the I/O thread."""
        raw = self.spool.read_segment_payload(ref)
        try:
            parse_message_bytes(f"{self.spool.segment(ref.segment)}@{ref.offset}", raw)
        except CorruptMessageFile as exc:  # a checksum mismatch too: never delivered
            self.spool.store(ref.queue_id, "corrupt", raw)
            log.error("%s: copied to corrupt/ (offset %d): %s", ref.queue_id, ref.offset, exc)
            metrics.QUEUE_CORRUPT.labels(exc.reason).inc()
            return False
        self.spool.store(ref.queue_id, "active", raw)
        return True

    def _record_sync(self, result: Result) -> Outcome | None:
        """Record the attempt (in the I/O thread); None if it must be retried."""
        queue_id = result.queue_id
        if result.problem in ("missing", "internal"):  # internal: retried after min_backoff
            return None
        try:
            message = self.spool.read("active", queue_id)
        except CorruptMessageFile as exc:  # its checksum is checked (msgfile.py)
            quarantine(self.spool, "active", queue_id, str(exc), exc.reason)
            return Outcome(queue_id, removed=True)
        except FileNotFoundError:
            return Outcome(queue_id, removed=True)
        if result.problem == "corrupt":
            quarantine(self.spool, "active", queue_id, "reported corrupt by a delivery agent")
            return Outcome(queue_id, removed=True)
        return apply_results(self.config, self.spool, self.states, message, result.results)

    def _defer_unrecorded(self, queue_id: str) -> None:
        """Leave a message we could not record in ``deferred/`` for ``min_backoff`` (its
        file is the truth: the next start or full scan finds it there)."""
        retry = self.clock() + self.config.delivery.min_backoff
        try:
            self.spool.defer(queue_id, "active", until=retry)
        except OSError:
            return
        self.scheduler.defer(queue_id, retry)
