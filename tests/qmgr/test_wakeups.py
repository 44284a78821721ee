"""Wake-ups as the queue manager receives them (mta/qmgr/wakeups.py): a real datagram socket,
no subprocess; what each one asks the next round to do, and that garbage is ignored."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mta.qmgr.remover import Remover
from mta.qmgr.schedule import Scheduler
from mta.qmgr.segments import SegmentTracker
from mta.qmgr.wakeups import WakeupListener
from mta.queue.ids import new_queue_id
from mta.queue.ipc import FlushDeferred, Queued, Rescan, SegmentAppended, Waker, wake_address
from mta.queue.segment import SegmentTail
from mta.queue.spool import Spool
from mta.queue.state import StateStore

NOW = 1_800_000_000.0


@dataclass
class Setup:
    spool: Spool
    scheduler: Scheduler
    segments: SegmentTracker
    listener: WakeupListener
    waker: Waker
    wakes: list[None]

    def flags(self) -> tuple[bool, bool, bool]:
        """(segments to look for, incoming/ to scan, deferred/ to reload)"""
        s = self.scheduler
        return self.segments.scan_wanted, s.scan_incoming, s.rescan_deferred

    def deliver(self) -> None:
        """What the event loop does when the socket is readable."""
        self.listener._readable()


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    spool = Spool(str(tmp_path / "spool"))
    spool.create()
    scheduler = Scheduler(spool, StateStore(spool.path))
    remover = Remover(spool)
    segments = SegmentTracker(spool, remover)
    wakes: list[None] = []
    listener = WakeupListener(spool, scheduler, segments, lambda: wakes.append(None), lambda: NOW)
    loop = asyncio.new_event_loop()
    listener.listen(loop)
    segments.scan_wanted = scheduler.scan_incoming = scheduler.rescan_deferred = False
    waker = Waker(spool.path)
    try:
        yield Setup(spool, scheduler, segments, listener, waker, wakes)
    finally:
        waker.close()
        listener.close(loop)
        loop.close()
        remover.stop()


def test_a_new_segment_is_looked_for_a_known_one_is_not(setup: Setup) -> None:
    known = SegmentTail(name="KNOWN", path="", writer_pid=0)
    setup.segments.tails["KNOWN"] = known
    assert setup.waker.send(SegmentAppended("KNOWN", 4096))
    setup.deliver()
    assert setup.flags() == (False, False, False)
    assert known.committed == 4096  # what may be read now
    assert setup.waker.send(SegmentAppended("NEW", 100))
    setup.deliver()
    assert setup.flags() == (True, False, False)
    del setup.segments.tails["KNOWN"]


def test_queued_looks_into_incoming(setup: Setup) -> None:
    setup.waker.send(Queued())
    setup.deliver()
    assert setup.flags() == (False, True, False)


def test_rescan_looks_into_incoming_and_deferred(setup: Setup) -> None:
    setup.waker.send(Rescan())
    setup.deliver()
    assert setup.flags() == (False, True, True)


def test_flush_makes_every_deferred_message_due_now(setup: Setup) -> None:
    spool = setup.spool
    ids = [new_queue_id() for _ in range(3)]
    for queue_id in ids:
        Path(spool.file("deferred", queue_id)).write_bytes(b"m")
        spool.set_next_try(queue_id, NOW + 3600)
    setup.waker.send(FlushDeferred())
    setup.deliver()
    assert setup.flags() == (False, True, True)
    assert [spool.next_try(queue_id) for queue_id in ids] == [NOW] * 3


def test_a_burst_is_read_at_once_and_wakes_the_scheduler_once(setup: Setup) -> None:
    for _ in range(5):  # (a burst longer than net.unix.max_dgram_qlen loses the rest)
        assert setup.waker.send(SegmentAppended("NEW"))
    assert setup.waker.send(Queued())
    setup.deliver()
    assert setup.flags() == (True, True, False)
    assert len(setup.wakes) == 1


def test_a_datagram_that_is_no_wakeup_is_ignored(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        for garbage in (b"queued", b"\xc1\xc1", os.urandom(200)):
            sock.sendto(garbage, wake_address(setup.spool.path))
    setup.waker.send(Rescan())  # what follows garbage still counts
    with caplog.at_level(logging.DEBUG, logger="mta.qmgr"):
        setup.deliver()
    assert setup.flags() == (False, True, True)
    ignored = [r for r in caplog.records if "no wake-up" in r.getMessage()]
    assert len(ignored) == 3 and all(r.levelno == logging.DEBUG for r in ignored)
