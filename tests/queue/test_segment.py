"""Segments (many small messages in one file): what the writer appends, the reader finds
whole and in order, whatever the moment it looks; damage and dead writers are detected."""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path

import pytest

from mta.queue import durable
from mta.queue.envelope import Envelope, encode_envelope
from mta.queue.ids import new_queue_id
from mta.queue.msgfile import END, ChecksumMismatch, parse_message_bytes
from mta.queue.segment import (
    DONE_SUFFIX,
    END_MARKER,
    PREFIX_SIZE,
    Damage,
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
        tail.announce(writer.committed)  # what the group committer's wake-up says
        seen += tail.read_new(1000)  # the reader follows batch by batch
    assert [ref.queue_id for ref in seen] == [qid for batch in batches for qid, _ in batch]
    assert tail is not None and tail.caught_up and not tail.closed
    for n, ref in enumerate(seen):
        message = read_record(tail.path, ref.offset, ref.length)
        assert message.envelope.queue_id == ref.queue_id
        assert message.read_message() == b"m%d.%d\r\n" % divmod(n, 5)
    writer.close()
    tail.look_for_end = True  # what the queue manager sets once the writer moved on
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
        refs = tail.read_new(10, whole_file=True)
        assert [r.queue_id for r in refs] == ([first_id] if cut == 1 else [])
        assert tail.caught_up and not tail.damage
    with open(path, "r+b") as f:
        f.seek(len(first))
        f.write(second)
    assert [r.queue_id for r in tail.read_new(10, whole_file=True)] == [second_id]
    tail.close()
    writer.close()


def test_read_new_stops_at_max_records_and_resumes(spool: Spool) -> None:
    writer = SegmentWriter(segments_dir(spool))
    ids = []
    for i in range(10):
        queue_id, data = record(spool, b"%d\r\n" % i)
        ids.append(queue_id)
        writer.commit(data)
    tail = tail_of(spool, writer)
    tail.announce(writer.committed)
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
        tail.look_for_end = True  # its writer moved on (or closed it): the marker counts
        total += len(tail.read_new(1000))
        assert tail.closed  # every one of them, the last by close()
        tail.close()
    assert total == 20


@pytest.mark.parametrize(
    "position",
    [0, 5, 10, 28, 31, 60, -1],
    ids=["magic", "length", "id", "crc", "header", "body", "end"],
)
def test_a_damaged_record_is_skipped_and_reading_resumes_after_it(
    spool: Spool, position: int
) -> None:
    writer = SegmentWriter(segments_dir(spool))
    good_id, good = record(spool, b"good\r\n")
    _, intact = record(spool, b"bad " * 20 + b"\r\n")
    after_id, after = record(spool, b"after\r\n")
    bad = bytearray(intact)
    bad[position] ^= 0xFF
    writer.commit(good + bytes(bad) + after)
    tail = tail_of(spool, writer)
    tail.announce(writer.committed)
    refs = tail.read_new(10)
    if position == 60:  # inside the message: the frame is whole, the checksum is not
        assert [r.queue_id for r in refs] == [good_id, refs[1].queue_id, after_id]
        with pytest.raises(ChecksumMismatch):
            read_record(tail.path, refs[1].offset, refs[1].length)
        assert tail.damage == []
    else:
        assert [r.queue_id for r in refs] == [good_id, after_id]
        assert tail.damage == [Damage(writer.name, len(good), len(bad), "damaged record")]
    assert read_record(tail.path, refs[-1].offset, refs[-1].length).read_message() == b"after\r\n"
    writer.close()


def test_garbage_between_records_is_one_damaged_span(spool: Spool) -> None:
    writer = SegmentWriter(segments_dir(spool))
    records = [record(spool, b"%d\r\n" % i) for i in range(3)]
    garbage = b"MTRC" + b"\x00" * 40 + b"MTAR not a record MTAZ" * 3
    writer.commit(records[0][1] + garbage + records[1][1] + records[2][1])
    tail = tail_of(spool, writer)
    tail.announce(writer.committed)
    assert [r.queue_id for r in tail.read_new(10)] == [qid for qid, _ in records]
    assert tail.damage == [Damage(writer.name, len(records[0][1]), len(garbage), "damaged record")]
    writer.close()


def test_only_what_was_announced_is_read(spool: Spool) -> None:
    writer = SegmentWriter(segments_dir(spool))
    first_id, first = record(spool, b"first\r\n")
    second_id, second = record(spool, b"second\r\n")
    writer.commit(first)
    tail = tail_of(spool, writer)
    assert tail.read_new(10) == []  # written and flushed, but nobody said so yet
    tail.announce(writer.committed)
    assert [r.queue_id for r in tail.read_new(10)] == [first_id]
    writer.append(second)  # written, not flushed: the reader must not see it
    assert tail.read_new(10) == [] and tail.damage == []
    writer.sync()
    tail.announce(len(first))  # an older announcement (a late datagram) changes nothing
    assert tail.read_new(10) == []
    tail.announce(writer.committed)
    assert [r.queue_id for r in tail.read_new(10)] == [second_id]
    writer.close()


def test_a_dead_writers_segment_is_read_whole_and_a_cut_record_reported(spool: Spool) -> None:
    writer = SegmentWriter(segments_dir(spool))
    ids_and_records = [record(spool, b"%d\r\n" % i) for i in range(2)]
    writer.commit(b"".join(data for _, data in ids_and_records))
    _, cut = record(spool, b"cut short\r\n")
    writer.append(cut[: len(cut) // 2])  # the writer died in the middle of this write
    tail = tail_of(spool, writer)
    tail.writer_gone = True  # (the queue manager's check of its pid)
    assert [r.queue_id for r in tail.read_new(10)] == [qid for qid, _ in ids_and_records]
    assert tail.damage == [Damage(writer.name, writer.committed, len(cut) // 2, "cut record")]
    assert tail.caught_up and tail.read_new(10) == []


def test_a_failed_flush_cuts_the_batch_off_and_keeps_the_segment(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = SegmentWriter(segments_dir(spool))
    kept_id, kept = record(spool, b"kept\r\n")
    writer.commit(kept)
    name, committed = writer.name, writer.committed

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "injected")

    monkeypatch.setattr(durable, "fdatasync", failing)
    for i in range(50):
        with pytest.raises(OSError):
            writer.commit(record(spool, b"refused %d\r\n" % i)[1])
        assert os.path.getsize(os.path.join(segments_dir(spool), name)) == committed
    monkeypatch.undo()
    later_id, later = record(spool, b"later\r\n")
    writer.commit(later)
    writer.close()
    assert writer.name == name
    assert os.listdir(segments_dir(spool)) == [name]  # no file per failure
    tail = tail_of(spool, writer)
    tail.writer_gone = True  # even read to its very end, nothing refused is there
    assert [r.queue_id for r in tail.read_new(100)] == [kept_id, later_id]
    assert tail.damage == []


def test_a_batch_that_cannot_be_cut_off_abandons_the_segment(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = SegmentWriter(segments_dir(spool))

    def failing(*args: object) -> None:
        raise OSError(errno.EIO, "injected")

    monkeypatch.setattr(durable, "fdatasync", failing)
    monkeypatch.setattr(os, "ftruncate", failing)
    for _ in range(20):
        with pytest.raises(OSError):
            writer.commit(record(spool, b"refused\r\n")[1])
    monkeypatch.undo()
    assert os.listdir(segments_dir(spool)) == []  # each empty one was removed
    queue_id, data = record(spool, b"fine\r\n")
    writer.commit(data)
    assert [r.queue_id for r in spool.segment_messages()] == [queue_id]
    writer.close()


def test_segments_and_message_files_of_version_1_are_still_read(spool: Spool) -> None:
    """An upgrade with a queue in place: records and message files without checksums."""
    queue_id, data = record(spool, b"Subject: old\r\n\r\nwritten by 1.x\r\n")
    message = parse_message_bytes("x", data[PREFIX_SIZE:])
    old_file = v1_message_file(message.read_message(), message.envelope)
    old_record = b"MTAR" + struct.pack(">I", len(old_file)) + queue_id.encode() + old_file
    name = new_queue_id()[:13] + "FFFFFE"  # its writer (the old version) is gone
    with open(os.path.join(segments_dir(spool), name), "wb") as f:
        f.write(old_record + END_MARKER)
    tail = SegmentTail.open(segments_dir(spool), name)
    tail.writer_gone = True
    [ref] = tail.read_new(10)
    assert ref.queue_id == queue_id and tail.closed
    assert read_record(tail.path, ref.offset, ref.length).read_message() == message.read_message()


def v1_message_file(message: bytes, envelope: Envelope) -> bytes:
    """A message file as version 1 wrote it (no checksum)."""
    encoded = encode_envelope(envelope)
    return b"MTAQ\x01\n" + message + encoded + struct.pack(">IQ7s", len(encoded), len(message), END)


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
    writer.commit(first)  # past max_size: the next batch needs a new segment
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
        tail.look_for_end = True  # no announcement: the end marker proves it all committed
        tail.read_new(10)
        assert tail.closed
        tail.close()


def test_a_segment_dropped_while_the_cli_reads_it_is_skipped(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The queue manager deletes a segment whose messages are all done at any moment; the
    queue CLI's listing (``mta queue list``) must skip it, not fail on the vanished file."""
    writer = SegmentWriter(segments_dir(spool))
    writer.commit(record(spool, b"done meanwhile\r\n")[1])
    writer.close()
    opened = spool.open_segment

    def open_then_drop(name: str) -> SegmentTail:
        tail = opened(name)
        os.unlink(os.path.join(segments_dir(spool), name))  # the queue manager was faster
        return tail

    monkeypatch.setattr(spool, "open_segment", open_then_drop)
    assert list(spool.segment_messages()) == []
