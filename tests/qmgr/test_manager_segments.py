"""The queue manager's view of segments, on a real spool: what recovery schedules, and when
a segment may be deleted.  (Delivery from segments end to end is tested in tests/delivery
and tests/server, with real processes.)"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mta.config import Config, QueueConfig
from mta.qmgr.manager import QueueManager
from mta.queue.ids import new_queue_id
from mta.queue.segment import DONE_SUFFIX, encode_done, record_prefix
from tests.qmgr.segments import claim, offsets, payload, write_segment


@pytest.fixture
def qmgr(tmp_path: Path) -> Iterator[QueueManager]:
    manager = QueueManager(Config(queue=QueueConfig(path=str(tmp_path / "spool"))))
    try:
        yield manager
    finally:
        manager.close()


def test_recovery_schedules_what_is_neither_done_nor_copied_out(qmgr: QueueManager) -> None:
    spool = qmgr.spool
    ids = [new_queue_id() for _ in range(4)]
    name = write_segment(spool, ids, closed=False)
    done_offset = offsets(spool, name)[0]
    with open(spool.segment(name) + DONE_SUFFIX, "wb") as f:
        f.write(encode_done([done_offset]))  # delivered before the crash
    with open(spool.file("deferred", ids[1]), "wb") as f:
        f.write(payload(ids[1]))  # copied out before the crash; its done mark was lost

    qmgr.recover()
    assert claim(qmgr) == ids[2:]
    jobs = list(qmgr.schedule.pending)
    assert all(job.segment == name and job.length > 0 for job in jobs)
    assert set(ids[2:]) <= qmgr.schedule.active
    qmgr.remover.stop()  # writes what it was handed: the copied-out one is now marked done
    assert [ref.queue_id for ref in spool.segment_messages()] == ids[2:]


def test_a_closed_segment_is_deleted_once_everything_in_it_is_done(qmgr: QueueManager) -> None:
    spool = qmgr.spool
    ids = [new_queue_id() for _ in range(3)]
    name = write_segment(spool, ids, closed=True, pid="000001")  # its writer: alive (init)
    qmgr.recover()
    assert claim(qmgr) == ids
    for queue_id in ids[:2]:
        qmgr.segments.done(qmgr.segments.located[queue_id], delivered=True)
    qmgr.segments.retire(check_writers=False)
    assert name in qmgr.segments.tails  # one message is still live
    qmgr.segments.done(qmgr.segments.located[ids[2]], delivered=True)
    qmgr.segments.retire(check_writers=False)
    assert name not in qmgr.segments.tails
    qmgr.remover.stop()
    assert os.listdir(os.path.join(spool.path, "segments")) == []


def test_a_dead_writers_segment_is_read_to_the_end_before_it_is_deleted(
    qmgr: QueueManager,
) -> None:
    spool = qmgr.spool
    first = new_queue_id()
    name = write_segment(spool, [first], closed=False)
    qmgr.recover()
    assert claim(qmgr) == [first]
    qmgr.segments.done(qmgr.segments.located[first], delivered=True)
    late = new_queue_id()  # written just before the writer died, after our last read
    with open(spool.segment(name), "ab") as f:
        f.write(record_prefix(late, len(payload(late))) + payload(late))
    qmgr.segments.retire(check_writers=True)  # notices the writer is gone
    assert name in qmgr.segments.tails
    assert claim(qmgr) == [late]  # the next round reads what is left
    qmgr.segments.retire(check_writers=True)
    assert name in qmgr.segments.tails  # still live
    qmgr.segments.done(qmgr.segments.located[late], delivered=True)
    qmgr.segments.retire(check_writers=True)
    assert name not in qmgr.segments.tails
    qmgr.remover.stop()
    assert os.listdir(os.path.join(spool.path, "segments")) == []


def test_a_live_writers_open_segment_is_kept(qmgr: QueueManager) -> None:
    spool = qmgr.spool
    ids = [new_queue_id()]
    name = write_segment(spool, ids, closed=False, pid=f"{os.getpid():06X}")
    qmgr.recover()
    assert claim(qmgr) == ids
    qmgr.segments.done(qmgr.segments.located[ids[0]], delivered=True)
    for _ in range(3):
        qmgr.segments.retire(check_writers=True)
        claim(qmgr)
    assert name in qmgr.segments.tails  # its writer may append more at any moment


def test_a_damaged_segment_goes_to_corrupt_after_what_preceded_the_damage(
    qmgr: QueueManager,
) -> None:
    spool = qmgr.spool
    good = new_queue_id()
    name = write_segment(spool, [good], closed=False)
    with open(spool.segment(name), "ab") as f:
        f.write(b"garbage that is no record" * 3)
    qmgr.recover()
    assert claim(qmgr) == [good]
    qmgr.segments.done(qmgr.segments.located[good], delivered=True)
    qmgr.segments.retire(check_writers=False)
    assert spool.list("corrupt") == [name]  # kept for a person to look at, never deleted
    assert os.listdir(os.path.join(spool.path, "segments")) in ([], [name + DONE_SUFFIX])
    qmgr.remover.stop()
    assert os.listdir(os.path.join(spool.path, "segments")) == []


def test_a_read_error_is_no_damage_the_segment_is_read_again(qmgr: QueueManager) -> None:
    spool = qmgr.spool
    first = new_queue_id()
    name = write_segment(spool, [first], closed=False)
    qmgr.recover()
    qmgr.segments.open_new()
    tail = qmgr.segments.tails[name]
    good_fd = tail.fd
    tail.fd = os.open(os.devnull, os.O_WRONLY)  # reading it fails (EBADF), as on an I/O error
    assert claim(qmgr) == []
    qmgr.segments.retire(check_writers=False)
    assert not tail.broken and spool.list("corrupt") == []  # nothing is declared damaged
    os.close(tail.fd)
    tail.fd = good_fd
    assert claim(qmgr) == [first]  # the next round reads it after all


def test_a_live_writers_damaged_segment_goes_to_corrupt_on_a_quiet_queue(
    qmgr: QueueManager,
) -> None:
    spool = qmgr.spool
    name = write_segment(spool, [], closed=False, pid=f"{os.getpid():06X}")
    with open(spool.segment(name), "ab") as f:
        f.write(b"garbage that is no record" * 2)
    qmgr.recover()
    assert claim(qmgr) == []
    qmgr.segments.retire(check_writers=True)  # a quiet queue: every round is a poll
    assert spool.list("corrupt") == [name]


def test_a_copy_cut_short_by_a_crash_is_removed_at_start(qmgr: QueueManager) -> None:
    spool = qmgr.spool
    queue_id = new_queue_id()
    copy = Path(spool.file("tmp", ".copy-" + queue_id))
    copy.write_bytes(payload(queue_id)[:20])  # the copy into active/ was under way
    name = write_segment(spool, [queue_id], closed=True)
    qmgr.recover()
    assert not copy.exists()
    assert claim(qmgr) == [queue_id]  # the segment still has it: delivered from there
    assert name in qmgr.segments.tails
