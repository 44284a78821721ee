"""Applying results (mta/qmgr/apply.py) in-process on a real spool, with the clock injected:
where a message ends up after each kind of result."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from mta.config import Config, DeliveryConfig, QueueConfig
from mta.qmgr.apply import all_done_at_first_try
from mta.qmgr.manager import QueueManager
from mta.queue.ids import new_queue_id
from mta.queue.ipc import Job, Problem, Result
from mta.queue.results import RecipientResult, Status
from tests.qmgr.segments import claim, payload, write_segment

NOW = 1_800_000_000.0
MIN_BACKOFF = 300.0


@pytest.fixture
def qmgr(tmp_path: Path) -> Iterator[QueueManager]:
    config = Config(
        queue=QueueConfig(path=str(tmp_path / "spool")),
        delivery=DeliveryConfig(min_backoff=MIN_BACKOFF),
    )
    manager = QueueManager(config, clock=lambda: NOW)
    try:
        yield manager
    finally:
        manager.close()


def result(queue_id: str, *statuses: Status, problem: Problem = "") -> Result:
    results = [
        RecipientResult(address="b@y.test", status=s, dsn="2.0.0", reply="250 ok") for s in statuses
    ]
    return Result(queue_id=queue_id, results=results, problem=problem)


def apply(qmgr: QueueManager, outcome: Result, job: Job) -> None:
    asyncio.run(qmgr.results.apply(outcome, job))


def test_all_done_at_first_try_needs_a_first_try_and_every_recipient_sent() -> None:
    first = Job(queue_id="Q")
    assert all_done_at_first_try(result("Q", "sent", "sent"), first)
    assert not all_done_at_first_try(result("Q", "sent", "deferred"), first)
    assert not all_done_at_first_try(result("Q"), first)  # nothing was tried
    assert not all_done_at_first_try(result("Q", problem="internal"), first)
    assert not all_done_at_first_try(result("Q", "sent"), Job(queue_id="Q", recipients=["b"]))


def test_a_segment_message_sent_at_once_is_only_marked_done(qmgr: QueueManager) -> None:
    queue_id = new_queue_id()
    write_segment(qmgr.spool, [queue_id], closed=False)
    qmgr.recover()
    assert claim(qmgr) == [queue_id]
    job = qmgr.schedule.pending.popleft()
    apply(qmgr, result(queue_id, "sent"), job)
    assert qmgr.schedule.active == set() and qmgr.segments.located == {}
    assert qmgr.wake.is_set()
    qmgr.remover.stop()
    assert list(qmgr.spool.segment_messages()) == []
    assert all(qmgr.spool.list(s) == [] for s in ("active", "deferred", "corrupt"))


def test_a_deferred_segment_message_is_copied_out_then_deferred(qmgr: QueueManager) -> None:
    queue_id = new_queue_id()
    write_segment(qmgr.spool, [queue_id], closed=False)
    qmgr.recover()
    claim(qmgr)
    job = qmgr.schedule.pending.popleft()
    apply(qmgr, result(queue_id, "deferred"), job)
    spool = qmgr.spool
    assert spool.list("deferred") == [queue_id] and spool.list("active") == []
    assert Path(spool.file("deferred", queue_id)).read_bytes() == payload(queue_id)
    [(next_try, deferred_id)] = qmgr.schedule.deferred
    assert deferred_id == queue_id and spool.next_try(queue_id) == next_try
    assert qmgr.schedule.active == set()
    qmgr.remover.stop()
    assert list(spool.segment_messages()) == []  # marked done: the file counts now


def claim_active_file(qmgr: QueueManager) -> Job:
    """A message with a file in ``active/`` at start, claimed again: its job."""
    queue_id = new_queue_id()
    Path(qmgr.spool.file("active", queue_id)).write_bytes(payload(queue_id))
    qmgr.recover()
    return qmgr.schedule.pending.popleft()


def test_an_agents_internal_error_defers_the_message_for_min_backoff(qmgr: QueueManager) -> None:
    job = claim_active_file(qmgr)
    queue_id = job.queue_id
    apply(qmgr, result(queue_id, problem="internal"), job)
    assert qmgr.spool.list("deferred") == [queue_id]
    assert qmgr.spool.next_try(queue_id) == NOW + MIN_BACKOFF
    assert qmgr.schedule.deferred == [(NOW + MIN_BACKOFF, queue_id)]
    assert qmgr.schedule.active == set()


def test_a_message_an_agent_found_corrupt_goes_to_corrupt(qmgr: QueueManager) -> None:
    job = claim_active_file(qmgr)
    queue_id = job.queue_id
    apply(qmgr, result(queue_id, problem="corrupt"), job)
    assert qmgr.spool.list("corrupt") == [queue_id]
    assert qmgr.schedule.deferred == [] and qmgr.schedule.active == set()


def test_a_round_claims_what_the_injected_clock_says_is_due(tmp_path: Path) -> None:
    now = [NOW]
    config = Config(queue=QueueConfig(path=str(tmp_path / "spool")))
    manager = QueueManager(config, clock=lambda: now[0])
    try:
        queue_id = new_queue_id()
        Path(manager.spool.file("deferred", queue_id)).write_bytes(payload(queue_id))
        manager.spool.set_next_try(queue_id, NOW + 600)
        manager.recover()
        manager.round()
        assert list(manager.schedule.pending) == []
        now[0] = NOW + 600
        manager.round()
        assert [job.queue_id for job in manager.schedule.pending] == [queue_id]
        assert manager.spool.list("active") == [queue_id]
    finally:
        manager.close()
