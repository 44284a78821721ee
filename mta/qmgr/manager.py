"""The queue manager: the one process that decides what is delivered when.

It takes new messages from the segments smtpd appends to (segments.py) and from
``incoming/`` (large and locally generated messages, claimed by renaming them into
``active/``), woken at once by a datagram from smtpd after each commit (wakeups.py) and
polling once a second as a fallback.  It brings due messages back from ``deferred/``
(schedule.py), hands jobs to the connected delivery agents (agents.py) and applies their
results (apply.py, outcome.py); the remover deletes what is done (remover.py).

This module owns the lifecycle and the scheduling round that wires the parts together:

* start: recover from the directories alone — everything in ``active/`` and every message
  in a segment not marked done is scheduled again, ``tmp/`` leftovers are removed, names
  that are not queue IDs go to ``corrupt/`` (housekeeping.py);
* a round (after a wake-up, or :data:`POLL_SECONDS` without one): periodic housekeeping,
  claim new and due messages within the active window, hand out jobs — at most one round
  per turn of the event loop, however many wake-ups came;
* stop (SIGTERM/SIGINT): hand out nothing more, wait up to ``master.graceful_timeout``
  for the results of jobs in flight, finish the round under way, then close everything.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable

import uvloop

from mta.config import Config
from mta.qmgr import housekeeping
from mta.qmgr.agents import AgentChannel
from mta.qmgr.apply import ResultApplier
from mta.qmgr.remover import Remover
from mta.qmgr.schedule import Scheduler
from mta.qmgr.segments import SegmentTracker
from mta.qmgr.shaping import Shaper
from mta.qmgr.wakeups import WakeupListener
from mta.queue.spool import Spool
from mta.queue.state import StateStore

__all__ = ["QueueManager", "run_qmgr"]

log = logging.getLogger("mta.qmgr")

POLL_SECONDS = 1.0
FULL_SCAN_SECONDS = 60.0  # deferred/ is read again and tmp/ cleaned this often
COUNT_SECONDS = 2.0  # how often queue depth metrics are refreshed

Heartbeat = Callable[[], None]


def run_qmgr(config: Config, heartbeat: Heartbeat | None = None) -> None:
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(QueueManager(config).run(heartbeat))
    finally:
        loop.close()


class QueueManager:
    def __init__(self, config: Config, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.spool = Spool(config.queue.path)
        self.spool.create()
        self.states = StateStore(self.spool.path)
        self.wake = asyncio.Event()
        self.remover = Remover(self.spool)
        self.schedule = Scheduler(self.spool, self.states)
        self.segments = SegmentTracker(self.spool, self.remover)
        wake = self.wake.set
        self.results = ResultApplier(
            config, self.spool, self.states, self.schedule, self.segments, self.remover, wake, clock
        )
        self.agents = AgentChannel(
            self.spool.path, self.schedule, self.results.apply, wake, Shaper(config)
        )
        self.wakeups = WakeupListener(self.spool, self.schedule, self.segments, wake, clock)
        self.wakeups.flushed = self.agents.revive_all
        self._scheduling = True
        self._last_full_scan = 0.0
        self._last_count = 0.0
        self._last_segment_scan = 0.0

    # ----- lifecycle ------------------------------------------------------------------

    async def run(self, heartbeat: Heartbeat | None) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        self.recover()
        await self.agents.listen()
        self.wakeups.listen(loop)
        scheduler = loop.create_task(self._schedule_forever(heartbeat))
        log.info(
            "queue manager ready: %d active, %d deferred",
            len(self.schedule.active),
            len(self.schedule.deferred),
        )
        await stop.wait()
        self.schedule.stopping = True
        await self._drain()
        self._scheduling = False  # the scheduler ends after the round it may be in
        self.wake.set()
        await scheduler
        self.agents.close()
        self.wakeups.close(loop)
        self.close()

    def close(self) -> None:
        """Finish the file work handed out, then release threads and descriptors."""
        self.results.close()
        self.remover.stop()
        self.segments.close()

    async def _drain(self) -> None:
        """Wait for results of jobs in flight (agents are draining too), then stop."""
        deadline = time.monotonic() + self.config.master.graceful_timeout
        while self.agents.busy() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    def recover(self) -> None:
        housekeeping.clean_tmp(self.spool, self.clock())
        housekeeping.remove_copy_leftovers(self.spool)
        housekeeping.quarantine_strangers(self.spool)
        self.schedule.recover()
        self.segments.note_extracted()

    # ----- the scheduling round -------------------------------------------------------

    async def _schedule_forever(self, heartbeat: Heartbeat | None) -> None:
        while self._scheduling:
            try:
                await asyncio.wait_for(self.wake.wait(), POLL_SECONDS)
            except TimeoutError:
                pass
            self.wake.clear()
            if heartbeat is not None:
                heartbeat()
            if self._scheduling:
                self.round()

    def round(self) -> None:
        now = self.clock()
        self._periodic(now)
        if self.schedule.rescan_deferred:
            self.schedule.load_deferred()
        polled = now - self._last_segment_scan >= POLL_SECONDS
        if self.segments.scan_wanted or polled:
            self._last_segment_scan = now
            self.segments.open_new()
        self.schedule.schedule_segment_messages(self.segments.claim(self.schedule.room()))
        self.segments.retire(check_writers=polled)
        if self.schedule.scan_incoming or polled:
            self.schedule.claim_incoming()
        self.schedule.claim_due(now)
        self.agents.dispatch()
        self.agents.tick()

    def _periodic(self, now: float) -> None:
        """What is due every so often rather than every round."""
        if now - self._last_full_scan >= FULL_SCAN_SECONDS:
            self._last_full_scan = now
            self.schedule.rescan_deferred = True
            housekeeping.clean_tmp(self.spool, now)
        if now - self._last_count >= COUNT_SECONDS:
            self._last_count = now
            housekeeping.count_queue(self.spool, len(self.segments.located), now)
