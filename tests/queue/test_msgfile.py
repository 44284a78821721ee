"""The message file: what is written is read back exactly; a partial file is always detected."""

from __future__ import annotations

import asyncio
import tracemalloc
from pathlib import Path

import msgspec
import pytest
import uvloop

from mta.queue.commit import GroupCommitter
from mta.queue.envelope import Envelope, Recipient, decode_envelope, encode_envelope
from mta.queue.ids import new_queue_id
from mta.queue.msgfile import (
    HEADER,
    TRAILER_SIZE,
    ChecksumMismatch,
    CorruptMessageFile,
    MessageFile,
    read_message_file,
)
from mta.queue.spool import Spool


def make_envelope(queue_id: str, size: int) -> Envelope:
    """An envelope with every field away from its default."""
    return Envelope(
        queue_id=queue_id,
        sender="sender@example.test",
        recipients=[
            Recipient(address="a@example.org"),
            Recipient(address="δοκιμή@παράδειγμα.test", params={"NOTIFY": "NEVER", "X": None}),
        ],
        mail_params={"BODY": "8BITMIME", "SMTPUTF8": None, "SIZE": "123"},
        client_address="2001:db8::1",
        client_helo="client.example.test",
        received_at=1_790_000_000.25,
        size=size,
        body_type="8BITMIME",
        smtputf8=True,
        is_bounce=True,
    )


def commit(spool: Spool, writer_chunks: dict[str, list[bytes]]) -> dict[str, Envelope]:
    """Write each message with MessageWriter and make it durable with a GroupCommitter."""

    async def main() -> dict[str, Envelope]:
        loop = asyncio.get_running_loop()
        committer = GroupCommitter(spool, loop)
        futures: list[asyncio.Future[OSError | None]] = []
        envelopes = {}
        try:
            for queue_id, chunks in writer_chunks.items():
                writer = spool.new_message(queue_id)
                for chunk in chunks:
                    writer.write(chunk)
                envelopes[queue_id] = make_envelope(queue_id, writer.length)
                writer.finish(envelopes[queue_id])
                future = loop.create_future()
                committer.submit(writer, future.set_result)
                futures.append(future)
            results = await asyncio.wait_for(asyncio.gather(*futures), 10)
        finally:
            committer.stop()
        assert results == [None] * len(futures)
        return envelopes

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


def committed(spool: Spool, queue_id: str) -> MessageFile:
    """The committed message, wherever the spool keeps it (a segment or a file)."""
    found = spool.find(queue_id)
    assert found is not None, f"{queue_id} is not in the queue"
    return found[1]


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    spool = Spool(str(tmp_path / "spool"))
    spool.create()
    return spool


MESSAGE = b"Subject: hello\r\nFrom: <sender@example.test>\r\n\r\nbody \xc3\xa9\r\n.line\r\n"


def test_round_trip(spool: Spool) -> None:
    queue_id = new_queue_id()
    envelopes = commit(spool, {queue_id: [MESSAGE[:10], MESSAGE[10:]]})
    message = committed(spool, queue_id)
    assert message.envelope == envelopes[queue_id]
    assert message.envelope.size == len(MESSAGE)
    assert message.message_length == len(MESSAGE)
    assert message.read_message() == MESSAGE
    assert message.read_headers() == b"Subject: hello\r\nFrom: <sender@example.test>\r\n"


def test_round_trip_of_a_big_message_in_many_chunks(spool: Spool) -> None:
    queue_id = new_queue_id()
    chunks = [bytes([i % 256]) * (1000 + i) for i in range(700)]  # ~ 1 MB, many buffer flushes
    commit(spool, {queue_id: chunks})
    message = committed(spool, queue_id)
    assert message.read_message() == b"".join(chunks)
    assert message.envelope.size == sum(map(len, chunks))


def test_empty_message_round_trip(spool: Spool) -> None:
    queue_id = new_queue_id()
    envelopes = commit(spool, {queue_id: []})
    message = committed(spool, queue_id)
    assert message.read_message() == b""
    assert message.envelope == envelopes[queue_id]


def test_message_containing_the_end_marker_round_trips(spool: Spool) -> None:
    queue_id = new_queue_id()
    tricky = HEADER + b"MTAEND\n" + b"\x00" * 19 + b"MTAEND\n"
    commit(spool, {queue_id: [tricky]})
    assert committed(spool, queue_id).read_message() == tricky


def valid_file(spool: Spool) -> bytes:
    """The bytes of a complete message file, as MessageWriter writes one."""
    writer = spool.new_message(new_queue_id())
    writer.write(b"Subject: x\r\n\r\nshort\r\n")
    writer.finish(make_envelope(writer.queue_id, writer.length))
    writer.persist()
    return Path(writer.tmp_path).read_bytes()


def test_every_truncation_is_detected(spool: Spool, tmp_path: Path) -> None:
    data = valid_file(spool)
    path = tmp_path / "cut"
    for length in range(len(data)):
        path.write_bytes(data[:length])
        with pytest.raises(CorruptMessageFile):
            read_message_file(str(path))
    path.write_bytes(data)
    assert read_message_file(str(path)).read_message() == b"Subject: x\r\n\r\nshort\r\n"


@pytest.mark.parametrize(
    "garbage", [b"\n", b"x" * 100, b"\x00" * 19, b"MTAEND\n"], ids=["lf", "text", "nul", "end"]
)
def test_garbage_appended_is_detected(spool: Spool, tmp_path: Path, garbage: bytes) -> None:
    path = tmp_path / "long"
    path.write_bytes(valid_file(spool) + garbage)
    with pytest.raises(CorruptMessageFile):
        read_message_file(str(path))


def test_file_with_its_trailer_repeated_is_detected(spool: Spool, tmp_path: Path) -> None:
    data = valid_file(spool)
    path = tmp_path / "twice"
    path.write_bytes(data + data[-TRAILER_SIZE:])  # a plausible trailer; the lengths do not add up
    with pytest.raises(CorruptMessageFile):
        read_message_file(str(path))


def test_damaged_envelope_is_detected(spool: Spool, tmp_path: Path) -> None:
    data = valid_file(spool)
    message_end = len(HEADER) + len(b"Subject: x\r\n\r\nshort\r\n")
    envelope_length = len(data) - TRAILER_SIZE - message_end
    damaged = (
        data[:message_end] + b"\xc1" * envelope_length + data[-TRAILER_SIZE:]
    )  # 0xc1: never msgpack
    path = tmp_path / "damaged"
    path.write_bytes(damaged)
    with pytest.raises(CorruptMessageFile):
        read_message_file(str(path))


def test_foreign_file_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "foreign"
    path.write_bytes(b"From MAILER-DAEMON Thu Jan  1 00:00:00 1970\n" + b"x" * 100)
    with pytest.raises(CorruptMessageFile):
        read_message_file(str(path))


def test_old_envelope_without_new_fields_is_readable() -> None:
    # Schema evolution: a file written before a field existed decodes with the default.
    old = msgspec.msgpack.encode(
        {"queue_id": "Q", "sender": "", "recipients": [{"address": "a@b"}]}
    )
    envelope = decode_envelope(old)
    assert envelope == Envelope(queue_id="Q", sender="", recipients=[Recipient(address="a@b")])
    assert envelope.body_type == "7BIT" and not envelope.is_bounce
    assert decode_envelope(encode_envelope(envelope)) == envelope


# ----- checksums (version 2) ------------------------------------------------------------


def large_file(spool: Spool, size: int = 3_000_000) -> Path:
    """A message file too large to be read whole (streamed when it is checked)."""
    writer = spool.new_message(new_queue_id())
    for i in range(size // 100_000):
        writer.write(bytes([65 + i % 26]) * 99_998 + b"\r\n")
    writer.finish(make_envelope(writer.queue_id, writer.length))
    writer.persist()
    return Path(writer.tmp_path)


@pytest.mark.parametrize("where", ["header", "message", "envelope", "lengths", "checksum"])
def test_a_flipped_byte_anywhere_is_detected(spool: Spool, tmp_path: Path, where: str) -> None:
    data = bytearray(valid_file(spool))
    message_end = len(HEADER) + len(b"Subject: x\r\n\r\nshort\r\n")
    at = {
        "header": 4,  # the version: no longer a message file
        "message": len(HEADER) + 3,
        "envelope": message_end + 2,
        "lengths": len(data) - TRAILER_SIZE + 2,
        "checksum": len(data) - 9,
    }[where]
    data[at] ^= 0x01
    path = tmp_path / "flipped"
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptMessageFile):
        read_message_file(str(path)).read_message()


def test_a_checksum_mismatch_is_its_own_kind(spool: Spool, tmp_path: Path) -> None:
    data = bytearray(valid_file(spool))
    data[len(HEADER) + 3] ^= 0x01  # the message, its frame intact
    path = tmp_path / "flipped"
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatch) as caught:
        read_message_file(str(path))
    assert caught.value.reason == "checksum"


def test_a_large_file_is_checked_by_streaming_it(spool: Spool) -> None:
    path = large_file(spool)
    data = bytearray(path.read_bytes())
    assert read_message_file(str(path)).message_length > 2_000_000  # intact: fine
    data[len(data) // 2] ^= 0x20
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatch):
        read_message_file(str(path))
    lazy = read_message_file(str(path), verify=False)  # only what the envelope needs
    with pytest.raises(ChecksumMismatch):
        lazy.verify()
    with pytest.raises(ChecksumMismatch):
        lazy.read_message()


def test_checking_a_large_file_does_not_hold_it_in_memory(spool: Spool) -> None:
    path = large_file(spool, 8_000_000)
    tracemalloc.start()
    try:
        message = read_message_file(str(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert message.message_length > 7_000_000
    assert peak < 3 << 20  # a chunk or two, not the 8 MB file
