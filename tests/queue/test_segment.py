"""Segments (many small messages in one file): what the writer appends, the reader finds
whole and in order, whatever the moment it looks; damage and dead writers are detected."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mta.queue.segment import (
    DONE_SUFFIX,
    SegmentTail,
    SegmentWriter,
    encode_done,
    read_done,
    read_record,
)
from mta.queue.spool import Spool
from tests.queue.messages import finished_message


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    spool = Spool(str(tmp_path / "spool"))
    spool.create()
    return spool


def segments_dir(spool: Spool) -> str:
    return os.path.join(spool.path, "segments")


def record(spool: Spool, body: bytes) -> tuple[str, bytes]:
    """A finished small message as a segment record: (queue id, record bytes)."""
    writer = finished_message(spool, body)
    assert writer.in_memory
    return writer.queue_id, writer.record()


def tail_of(spool: Spool, writer: SegmentWriter) -> SegmentTail:
    return SegmentTail.open(segments_dir(spool), writer.name)


def test_records_are_read_back_whole_and_in_order(spool: Spool) -> None:
    writer = SegmentWriter(segments_dir(spool))
    batches = [[record(spool, b"m%d.%d\r\n" % (b, i)) for i in range(5)] for b in range(3)]
    tail = None
    seen = []
    for batch in batches:
        writer.append(b"".join(data for _, data in batch))
        writer.sync()
        tail = tail or tail_of(spool, writer)
        seen += tail.read_new(1000)  # the reader follows batch by batch
    assert [ref.queue_id for ref in seen] == [qid for batch in batches for qid, _ in batch]
    assert tail is not None and tail.caught_up and not tail.closed
    for n, ref in enumerate(seen):
        message = read_record(tail.path, ref.offset, ref.length)
        assert message.envelope.queue_id == ref.queue_id
        assert message.read_message() == b"m%d.%d\r\n" % divmod(n, 5)
    writer.close()
    assert tail.read_new(1000) == []
    assert tail.closed  # the end marker was read
    tail.close()


def test_a_record_being_written_is_not_read_until_it_is_whole(spool: Spool) -> None:
    writer = SegmentWriter(segments_dir(spool))
    first_id, first = record(spool, b"first\r\n")
    second_id, second = record(spool, b"second\r\n" * 50)
    writer.append(first)
    tail = tail_of(spool, writer)
    for cut in (1, 10, 27, len(second) // 2, len(second) - 1):  # every kind of partial write
        path = os.path.join(segments_dir(spool), writer.name)
        with open(path, "r+b") as f:
            f.truncate(len(first))
            f.seek(len(first))
            f.write(second[:cut])
        refs = tail.read_new(10)
        assert [r.queue_id for r in refs] == ([first_id] if cut == 1 else [])
        assert tail.caught_up and not tail.broken
    with open(path, "r+b") as f:
        f.seek(len(first))
        f.write(second)
    assert [r.queue_id for r in tail.read_new(10)] == [second_id]
    tail.close()
    writer.close()


def test_read_new_stops_at_max_records_and_resumes(spool: Spool) -> None:
    writer = SegmentWriter(segments_dir(spool))
    ids = []
    for i in range(10):
        queue_id, data = record(spool, b"%d\r\n" % i)
        ids.append(queue_id)
        writer.append(data)
    tail = tail_of(spool, writer)
    first = tail.read_new(4)
    assert not tail.caught_up  # more is waiting: a dead writer's segment is not done yet
    rest = tail.read_new(100)
    assert [r.queue_id for r in first + rest] == ids
    assert tail.caught_up
    tail.close()
    writer.close()


def test_writer_starts_a_new_segment_past_its_size_and_closes_the_old(spool: Spool) -> None:
    writer = SegmentWriter(segments_dir(spool), max_size=2000)
    names = []
    for i in range(20):
        writer.append(record(spool, b"x" * 300 + b"%d\r\n" % i)[1])
        writer.sync()
        if writer.name not in names:
            names.append(writer.name)
    writer.close()
    assert len(names) > 3
    assert sorted(os.listdir(segments_dir(spool))) == sorted(names)
    total = 0
    for name in names:
        tail = SegmentTail.open(segments_dir(spool), name)
        total += len(tail.read_new(1000))
        assert tail.closed  # every one of them, the last by close()
        tail.close()
    assert total == 20


@pytest.mark.parametrize("damage", ["magic", "header", "end"])
def test_a_damaged_record_stops_reading_there(spool: Spool, damage: str) -> None:
    writer = SegmentWriter(segments_dir(spool))
    good_id, good = record(spool, b"good\r\n")
    _, intact = record(spool, b"bad\r\n")
    bad = bytearray(intact)
    position = {"magic": 0, "header": 27, "end": len(bad) - 1}[damage]
    bad[position] ^= 0xFF
    writer.append(good + bytes(bad) + record(spool, b"after\r\n")[1])
    writer.close()
    tail = tail_of(spool, writer)
    assert [r.queue_id for r in tail.read_new(10)] == [good_id]
    assert tail.broken
    assert tail.read_new(10) == []
    tail.close()


def test_done_marks_round_trip_and_a_torn_mark_is_ignored(tmp_path: Path) -> None:
    path = str(tmp_path / ("X" + DONE_SUFFIX))
    assert read_done(path) == set()
    with open(path, "wb") as f:
        f.write(encode_done([27, 1000, 5_000_000_000]))
        f.write(encode_done([42])[:5])  # a crash in the middle of an append
    assert read_done(path) == {27, 1000, 5_000_000_000}


def test_spool_lists_and_finds_messages_not_marked_done(spool: Spool) -> None:
    writer = SegmentWriter(segments_dir(spool))
    records = [record(spool, b"%d\r\n" % i) for i in range(4)]
    writer.append(b"".join(data for _, data in records))
    writer.sync()
    refs = list(spool.segment_messages())
    assert [r.queue_id for r in refs] == [qid for qid, _ in records]
    done_path = os.path.join(segments_dir(spool), writer.name + DONE_SUFFIX)
    with open(done_path, "wb") as f:
        f.write(encode_done([refs[1].offset]))
    assert [r.queue_id for r in spool.segment_messages()] == [
        records[0][0],
        records[2][0],
        records[3][0],
    ]
    found = spool.find(records[3][0])
    assert found is not None
    state, message = found
    assert state == "active" and message.read_message() == b"3\r\n"
    assert spool.find(records[1][0]) is None  # done: it is no longer in the queue
    writer.close()


def test_after_a_failed_rotation_the_next_batch_starts_a_new_segment(spool: Spool) -> None:
    directory = segments_dir(spool)
    writer = SegmentWriter(directory, max_size=100)
    first_id, first = record(spool, b"first\r\n")
    writer.append(first)  # past max_size: the next batch needs a new segment
    old = writer.name
    os.rename(directory, directory + ".away")  # creating the next segment fails
    with pytest.raises(FileNotFoundError):
        writer.append(record(spool, b"lost\r\n")[1])
    os.rename(directory + ".away", directory)
    second_id, second = record(spool, b"second\r\n")
    writer.append(second)
    writer.sync()
    writer.close()
    assert writer.name != old
    assert [ref.queue_id for ref in spool.segment_messages()] == [first_id, second_id]
    for name in (old, writer.name):  # both closed: the queue manager may delete them
        tail = SegmentTail.open(directory, name)
        tail.read_new(10)
        assert tail.closed
        tail.close()
