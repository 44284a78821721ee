"""Messages between processes (mta/queue/ipc.py): frames for jobs and results, datagrams for
wake-ups, each a typed msgspec Struct."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import get_args

import msgspec
import pytest

from mta.queue.ipc import (
    FlushDeferred,
    FrameReader,
    Job,
    Problem,
    Queued,
    Rescan,
    Result,
    SegmentAppended,
    Waker,
    WakeUp,
    decode_frame,
    decode_wakeup,
    encode_frame,
    encode_wakeup,
    wake_address,
)
from mta.queue.results import RecipientResult

WAKEUPS: list[WakeUp] = [
    SegmentAppended("0195F3A2B7C4100A3F1"),
    SegmentAppended("0195F3A2B7C4100A3F1", committed=(16 << 20) + 1_100_000),
    Queued(),
    FlushDeferred(),
    Rescan(),
]


@pytest.mark.parametrize("message", WAKEUPS, ids=lambda m: type(m).__name__)
def test_a_wakeup_survives_the_round_trip(message: WakeUp) -> None:
    datagram = encode_wakeup(message)
    assert len(datagram) <= 64  # one small datagram
    assert decode_wakeup(datagram) == message


def test_a_segment_wakeup_without_a_committed_length_announces_nothing() -> None:
    old = msgspec.msgpack.encode(["segment", "0195F3A2B7C4100A3F1"])  # an older sender
    assert decode_wakeup(old) == SegmentAppended("0195F3A2B7C4100A3F1", committed=0)


@pytest.mark.parametrize(
    "datagram",
    [
        b"",
        b"queued",  # the old byte strings are no wake-ups
        b"segment 0195F3A2B7C4100A3F1",
        b"\xff\x00garbage",
        msgspec.msgpack.encode(["nonesuch"]),
        msgspec.msgpack.encode(["segment"]),  # no name
        msgspec.msgpack.encode(["segment", 42]),
        encode_frame(Job(queue_id="0195F3A2B7C4100A3F1")),
    ],
)
def test_what_is_no_wakeup_decodes_to_none(datagram: bytes) -> None:
    assert decode_wakeup(datagram) is None


def test_a_waker_reaches_the_listener_of_its_spool_only(tmp_path: Path) -> None:
    ours, other = str(tmp_path / "ours"), str(tmp_path / "other")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(wake_address(ours))
        listener.settimeout(5)
        waker = Waker(ours)
        try:
            for message in WAKEUPS:
                assert waker.send(message)
                assert decode_wakeup(listener.recv(256)) == message
        finally:
            waker.close()
        stray = Waker(other)
        assert not stray.send(Queued())  # nobody listens there: the poll will find it
        stray.close()


def test_a_waker_can_be_used_again_after_close(tmp_path: Path) -> None:
    waker = Waker(str(tmp_path))
    assert not waker.send(Rescan())
    waker.close()
    waker.close()
    assert not waker.send(Rescan())
    waker.close()


def test_every_documented_problem_travels_and_no_other(tmp_path: Path) -> None:
    assert set(get_args(Problem)) == {"", "corrupt", "missing", "internal"}
    for problem in get_args(Problem):
        result = Result(queue_id="0195F3A2B7C4100A3F1", problem=problem)
        assert FrameReader().feed(encode_frame(result)) == [result]
    forged = msgspec.msgpack.encode({"type": "result", "queue_id": "X", "problem": "bogus"})
    with pytest.raises(msgspec.ValidationError):
        decode_frame(forged)


def test_frames_arrive_whole_however_the_stream_is_cut() -> None:
    frames: list[Job | Result] = [
        Job(queue_id="A", recipients=["a@x.test"]),
        Job(queue_id="B", segment="S", offset=30, length=400),
        Result(
            queue_id="A",
            results=[RecipientResult(address="a@x.test", status="sent", dsn="2.0.0", reply="250")],
        ),
    ]
    stream = b"".join(encode_frame(f) for f in frames)
    reader = FrameReader()
    got = []
    for i in range(0, len(stream), 7):
        got.extend(reader.feed(stream[i : i + 7]))
    assert got == frames
