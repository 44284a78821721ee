"""The scheduler (mta/qmgr/schedule.py) on a real spool, with time given, never waited for:
what is claimed when, in which order, within the active window."""

from __future__ import annotations

from pathlib import Path

import pytest

from mta.qmgr.schedule import Scheduler
from mta.queue.envelope import Envelope
from mta.queue.ids import new_queue_id
from mta.queue.ipc import Job
from mta.queue.segment import RecordRef
from mta.queue.spool import Spool
from mta.queue.state import MessageState, RecipientState, StateStore

NOW = 1_800_000_000.0


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    spool = Spool(str(tmp_path / "spool"))
    spool.create()
    return spool


def scheduler(spool: Spool, window: int = 100) -> Scheduler:
    return Scheduler(spool, StateStore(spool.path), window=window)


def put(spool: Spool, state: str, next_try: float | None = None) -> str:
    """A message file in ``state`` (the scheduler never reads it), due at ``next_try``."""
    queue_id = new_queue_id()
    Path(spool.file(state, queue_id)).write_bytes(b"message")
    if next_try is not None:
        spool.set_next_try(queue_id, next_try)
    return queue_id


def jobs(sched: Scheduler) -> list[str]:
    return [job.queue_id for job in sched.pending]


def test_due_messages_are_claimed_earliest_first_and_the_rest_wait(spool: Spool) -> None:
    late = put(spool, "deferred", NOW + 60)
    second = put(spool, "deferred", NOW - 10)
    first = put(spool, "deferred", NOW - 20)
    sched = scheduler(spool)
    sched.load_deferred()
    sched.claim_due(NOW)
    assert jobs(sched) == [first, second]
    assert spool.list("active") == sorted([first, second])
    assert sched.active == {first, second}
    assert spool.list("deferred") == [late]
    sched.claim_due(NOW + 59)
    assert jobs(sched) == [first, second]
    sched.claim_due(NOW + 60)
    assert jobs(sched) == [first, second, late]


def test_the_active_window_is_respected(spool: Spool) -> None:
    ids = [put(spool, "deferred", NOW - 100 + i) for i in range(5)]
    sched = scheduler(spool, window=2)
    sched.load_deferred()
    sched.claim_due(NOW)
    assert jobs(sched) == ids[:2] and sched.room() == 0
    sched.claim_due(NOW)
    assert jobs(sched) == ids[:2]  # no room: nothing more
    sched.finished(ids[0])
    sched.claim_due(NOW)
    assert jobs(sched) == ids[:3]
    assert spool.list("deferred") == ids[3:]


def test_a_message_rescheduled_meanwhile_is_pushed_back_with_its_new_time(spool: Spool) -> None:
    queue_id = put(spool, "deferred", NOW - 5)
    sched = scheduler(spool)
    sched.load_deferred()
    spool.set_next_try(queue_id, NOW + 300)  # e.g. another attempt's backoff
    sched.claim_due(NOW)
    assert jobs(sched) == [] and spool.list("deferred") == [queue_id]
    assert sched.deferred == [(NOW + 300, queue_id)]
    sched.claim_due(NOW + 300)
    assert jobs(sched) == [queue_id]


def test_a_message_released_held_or_deleted_meanwhile_is_skipped(spool: Spool) -> None:
    held = put(spool, "deferred", NOW - 5)
    deleted = put(spool, "deferred", NOW - 4)
    kept = put(spool, "deferred", NOW - 3)
    sched = scheduler(spool)
    sched.load_deferred()
    spool.move(held, "deferred", "hold")
    spool.remove("deferred", deleted)
    sched.claim_due(NOW)
    assert jobs(sched) == [kept]
    assert sched.deferred == [] and spool.list("hold") == [held]


def test_a_flush_makes_everything_due_once_the_heap_is_rebuilt(spool: Spool) -> None:
    ids = [put(spool, "deferred", NOW + 3600 + i) for i in range(3)]
    sched = scheduler(spool)
    sched.load_deferred()
    spool.flush_deferred(NOW)
    sched.claim_due(NOW)
    assert jobs(sched) == []  # the heap still has the old times...
    sched.load_deferred()
    sched.claim_due(NOW)
    assert sorted(jobs(sched)) == ids  # ...the files are the truth


def test_incoming_is_claimed_oldest_first_within_the_window(spool: Spool) -> None:
    ids = [put(spool, "incoming") for _ in range(3)]
    Path(spool.file("incoming", "stranger")).write_bytes(b"?")
    sched = scheduler(spool, window=2)
    sched.claim_incoming()
    assert jobs(sched) == ids[:2]
    assert sched.scan_incoming  # more is waiting: look again when there is room
    assert all(job.recipients is None for job in sched.pending)  # never tried: everyone
    sched.finished(ids[0])
    sched.claim_incoming()
    assert jobs(sched) == ids
    assert spool.list("incoming") == ["stranger"] and sched.scan_incoming
    sched.finished(ids[1])
    sched.claim_incoming()  # a name that is no queue ID is not scheduled
    assert jobs(sched) == ids and sched.room() == 1
    assert spool.list("corrupt") == ["stranger"] and spool.list("incoming") == []
    assert not sched.scan_incoming


def test_a_message_tried_before_goes_to_its_pending_recipients_only(spool: Spool) -> None:
    queue_id = put(spool, "active")
    recipients = [
        RecipientState(address="sent@x.test", status="sent"),
        RecipientState(address="pending@x.test"),
    ]
    StateStore(spool.path).save(MessageState(queue_id=queue_id, recipients=recipients))
    sched = scheduler(spool)
    sched.recover()
    assert list(sched.pending) == [Job(queue_id=queue_id, recipients=["pending@x.test"])]


def test_segment_messages_become_jobs_in_order(spool: Spool) -> None:
    refs = [RecordRef("SEG", new_queue_id(), offset, 100) for offset in (30, 160)]
    sched = scheduler(spool)
    sched.schedule_segment_messages(refs)
    assert list(sched.pending) == [
        Job(queue_id=ref.queue_id, segment="SEG", offset=ref.offset, length=100) for ref in refs
    ]
    assert sched.active == {ref.queue_id for ref in refs}


def test_retry_and_give_back(spool: Spool) -> None:
    sched = scheduler(spool)
    a, b, c = (Job(queue_id=new_queue_id()) for _ in range(3))
    sched.active.update({a.queue_id, b.queue_id})
    assert sched.retry(a) and not sched.retry(c)  # c is not ours (any more)
    sched.give_back([b, c])  # an agent died holding them: first in line
    assert list(sched.pending) == [c, b, a]
    sched.stopping = True
    assert not sched.retry(a)


def test_a_staged_incoming_file_waits_for_its_writer_or_its_death(spool: Spool) -> None:
    """``incoming/.ID``: its directory entry is not durable yet (mta/queue/commit.py)."""
    live = new_queue_id()  # made by this process: its writer runs
    dead = new_queue_id()[:13] + "FFFFFE"  # a writer that is surely gone
    for queue_id in (live, dead):
        Path(spool.file("incoming", "." + queue_id)).write_bytes(b"m")
    sched = scheduler(spool)
    sched.claim_incoming()
    assert [job.queue_id for job in sched.pending] == [dead]  # acknowledged, or never answered
    assert spool.list("incoming") == ["." + live]
    assert spool.list("corrupt") == []


def put_message(spool: Spool, hold: bool) -> str:
    """A complete message file in ``incoming/`` whose envelope says ``hold`` or not."""
    queue_id = new_queue_id()
    writer = spool.new_message(queue_id)
    writer.write(b"Subject: held?\r\n\r\nbody\r\n")
    writer.spill()
    writer.finish(Envelope(queue_id=queue_id, sender="s@x.test", recipients=[], hold=hold))
    writer.persist()
    spool.move(queue_id, "tmp", "incoming")
    return queue_id


def test_a_message_an_access_table_held_goes_to_hold_not_to_delivery(spool: Spool) -> None:
    held, normal = put_message(spool, hold=True), put_message(spool, hold=False)
    sched = scheduler(spool)
    sched.claim_incoming()
    assert jobs(sched) == [normal]
    assert spool.list("hold") == [held] and spool.list("incoming") == []
    spool.move(held, "hold", "deferred")  # mta queue release
    spool.set_next_try(held, NOW)
    sched.load_deferred()
    sched.claim_due(NOW)
    assert jobs(sched) == [normal, held]  # released: delivered like any other
