"""The queue manager's view of segments, on a real spool: what recovery schedules, and when
a segment may be deleted.  (Delivery from segments end to end is tested in tests/delivery
and tests/server, with real processes.)"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from mta.config import Config, QueueConfig
from mta.qmgr.manager import QueueManager
from mta.queue.ids import new_queue_id
from mta.queue.segment import DONE_SUFFIX, SegmentWriter, encode_done, record_prefix
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
    newer = write_segment(spool, [], closed=False, pid="000001")  # it moved on to this one
    qmgr.recover()
    assert claim(qmgr) == ids  # no announcement: the end marker proves them committed
    for queue_id in ids[:2]:
        qmgr.segments.done(qmgr.segments.located[queue_id], delivered=True)
    qmgr.segments.retire(check_writers=False)
    assert name in qmgr.segments.tails  # one message is still live
    qmgr.segments.done(qmgr.segments.located[ids[2]], delivered=True)
    qmgr.segments.retire(check_writers=False)
    assert name not in qmgr.segments.tails
    qmgr.remover.stop()
    assert os.listdir(os.path.join(spool.path, "segments")) == [newer]


def test_a_live_writers_closed_segment_is_not_trusted_before_it_moved_on(
    qmgr: QueueManager,
) -> None:
    """A body may hold the end marker's octets and a write may be seen half done: without
    a newer segment of the writer (or its death), only announced lengths count."""
    spool = qmgr.spool
    ids = [new_queue_id()]
    write_segment(spool, ids, closed=True, pid=f"{os.getpid():06X}")
    qmgr.recover()
    assert claim(qmgr) == []
    write_segment(spool, [], closed=False, pid=f"{os.getpid():06X}")
    assert claim(qmgr) == ids


def test_a_dead_writers_segment_is_read_to_the_end_before_it_is_deleted(
    qmgr: QueueManager,
) -> None:
    spool = qmgr.spool
    writer = subprocess.Popen(["sleep", "60"])  # stands for the smtpd worker that writes
    try:
        first = new_queue_id()
        name = write_segment(spool, [first], closed=False, pid=f"{writer.pid:06X}")
        qmgr.recover()
        qmgr.segments.announce(name, os.path.getsize(spool.segment(name)))
        assert claim(qmgr) == [first]
        qmgr.segments.done(qmgr.segments.located[first], delivered=True)
        late = new_queue_id()  # written just before the writer died, never announced
        with open(spool.segment(name), "ab") as f:
            f.write(record_prefix(late, len(payload(late))) + payload(late))
        assert claim(qmgr) == []  # not announced: its flush may not have returned
    finally:
        writer.kill()
        writer.wait()
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
    assert claim(qmgr) == []  # its writer lives and said nothing: maybe not flushed yet
    qmgr.segments.announce(name, os.path.getsize(spool.segment(name)))
    assert claim(qmgr) == ids
    qmgr.segments.done(qmgr.segments.located[ids[0]], delivered=True)
    for _ in range(3):
        qmgr.segments.retire(check_writers=True)
        claim(qmgr)
    assert name in qmgr.segments.tails  # its writer may append more at any moment


def test_a_damaged_span_goes_to_corrupt_and_the_messages_after_it_are_delivered(
    qmgr: QueueManager,
) -> None:
    spool = qmgr.spool
    good, after = new_queue_id(), new_queue_id()
    name = write_segment(spool, [good], closed=False)
    garbage_at = os.path.getsize(spool.segment(name))
    garbage = b"garbage that is no record" * 3
    with open(spool.segment(name), "ab") as f:
        f.write(garbage + record_prefix(after, len(payload(after))) + payload(after))
    qmgr.recover()
    before = corrupt_count("record")
    assert claim(qmgr) == [good, after]
    assert spool.list("corrupt") == [f"{name}.{garbage_at}"]  # kept for a person to look at
    assert Path(spool.file("corrupt", f"{name}.{garbage_at}")).read_bytes() == garbage
    assert corrupt_count("record") == before + 1
    for queue_id in (good, after):
        qmgr.segments.done(qmgr.segments.located[queue_id], delivered=True)
    qmgr.segments.retire(check_writers=False)
    qmgr.remover.stop()
    assert os.listdir(os.path.join(spool.path, "segments")) == []


def test_a_read_error_is_no_damage_the_segment_is_read_again(
    qmgr: QueueManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = qmgr.spool
    first = new_queue_id()
    write_segment(spool, [first], closed=False)
    qmgr.recover()

    def failing(*args: object) -> bytes:
        raise OSError(errno.EIO, "injected")

    monkeypatch.setattr(os, "pread", failing)  # reading fails, as on an I/O error
    assert claim(qmgr) == []
    monkeypatch.undo()
    qmgr.segments.retire(check_writers=False)
    assert spool.list("corrupt") == []  # nothing is declared damaged
    assert claim(qmgr) == [first]  # the next round reads it after all


def test_a_live_writers_damaged_span_goes_to_corrupt_once_committed(
    qmgr: QueueManager,
) -> None:
    spool = qmgr.spool
    name = write_segment(spool, [], closed=False, pid=f"{os.getpid():06X}")
    with open(spool.segment(name), "ab") as f:
        f.write(b"garbage that is no record" * 2)
    qmgr.recover()
    assert claim(qmgr) == []
    assert spool.list("corrupt") == []  # not committed: perhaps still being written
    qmgr.segments.announce(name, 50)
    assert claim(qmgr) == []
    assert spool.list("corrupt") == [f"{name}.0"]


def test_the_queue_manager_holds_no_descriptor_per_segment(qmgr: QueueManager) -> None:
    spool = qmgr.spool
    qmgr.recover()
    before = len(os.listdir("/proc/self/fd"))
    names = [write_segment(spool, [], closed=False, pid=f"{os.getpid():06X}") for _ in range(50)]
    claim(qmgr)
    assert set(names) <= set(qmgr.segments.tails)
    assert len(os.listdir("/proc/self/fd")) <= before


def test_failed_commits_on_a_full_disk_leave_one_segment_and_no_descriptors(
    qmgr: QueueManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 10, item 1: every write fails (ENOSPC), the end marker's too; the queue
    manager looks for new segments after each failure, as a wake-up or a poll makes it."""
    spool = qmgr.spool
    qmgr.recover()
    writer = SegmentWriter(spool.dir("segments"))
    first = new_queue_id()
    writer.append(record_prefix(first, len(payload(first))) + payload(first))
    writer.sync()
    before = len(os.listdir("/proc/self/fd"))  # with the writer's segment

    def full(*args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    for _ in range(100):
        refused = new_queue_id()
        with monkeypatch.context() as disk_full:
            disk_full.setattr(os, "write", full)
            with pytest.raises(OSError):
                writer.append(record_prefix(refused, len(payload(refused))) + payload(refused))
                writer.sync()
        claim(qmgr)
        qmgr.segments.retire(check_writers=True)
    assert len([n for n in os.listdir(spool.dir("segments")) if "." not in n]) <= 1
    assert len(os.listdir("/proc/self/fd")) <= before
    accepted = new_queue_id()
    writer.commit(record_prefix(accepted, len(payload(accepted))) + payload(accepted))
    qmgr.segments.announce(writer.name, writer.committed)
    assert claim(qmgr) == [first, accepted]  # space is back: delivered as ever
    writer.close()


def corrupt_count(reason: str) -> float:
    value = REGISTRY.get_sample_value("mta_queue_corrupt_total", {"reason": reason})
    return value or 0.0


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
