"""MAIL while the spool lacks room: ``452 4.3.1`` at MAIL, not ``451`` after DATA.

SMTPProtocol runs in the test process over a fake transport (fake_io.py) with a real spool
and committer; only the file system's free space is a fake (:class:`Disk`), which the test
sets, and the loop's clock is the test's, so a cached measurement expires when told to.
The process-tree version, on a real full tmpfs, is tests/faults/test_full_disk.py.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mta.protocol import replies
from mta.protocol.session import ParserBackend
from mta.queue.space import MAX_AGE, SpoolSpace
from mta.queue.spool import Spool
from mta.server.context import WorkerContext
from tests.server.fake_io import ClockLoop, Connection, make_context

pytestmark = pytest.mark.timeout(30)

MiB = 1 << 20
MAX_SIZE = MiB  # smtp.max_message_size in these tests
RESERVE = 2 * MiB  # queue.min_free in these tests
MAIL = b"MAIL FROM:<a@client.test>\r\n"
TRANSACTION = MAIL + b"RCPT TO:<b@example.org>\r\nDATA\r\n"
REFUSAL = "NOQUEUE: reject: MAIL from [127.0.0.1]: 452 4.3.1 Insufficient system storage"


class Disk:
    """The spool's file system as statvfs reports it; the test sets ``avail``."""

    def __init__(self, avail: int) -> None:
        self.avail = avail
        self.calls = 0

    def statvfs(self, path: str) -> os.statvfs_result:
        self.calls += 1
        blocks = self.avail // 4096
        return os.statvfs_result((4096, 4096, 1 << 30, blocks, blocks, 0, 0, 0, 0, 255))


@pytest.fixture
def disk() -> Disk:
    return Disk(avail=100 * MiB)


@pytest.fixture
def ctx(
    loop: ClockLoop, tmp_path: Path, parser: ParserBackend, disk: Disk
) -> Iterator[WorkerContext]:
    ctx = make_context(loop, Spool(str(tmp_path / "spool")), parser, max_message_size=MAX_SIZE)
    # What the worker made from the configuration, on the fake file system:
    made = ctx.space
    assert (made.path, made.min_free) == (ctx.spool.path, ctx.config.queue.min_free)
    assert made.needed() == max(ctx.config.queue.min_free, 3 * MAX_SIZE // 2)
    ctx.space = SpoolSpace(ctx.spool.path, RESERVE, MAX_SIZE, clock=loop.time, statvfs=disk.statvfs)
    yield ctx
    ctx.committer.stop()


def greeted(ctx: WorkerContext, peer: str = "127.0.0.1") -> Connection:
    conn = Connection(ctx, peer)
    assert conn.codes() == [b"220"]
    conn.send(b"EHLO client.test\r\n")
    assert conn.codes() == [b"250"]
    return conn


def queued(spool: Spool) -> list[str]:
    return [ref.queue_id for ref in Spool(spool.path).segment_messages()] + spool.list("incoming")


def test_mail_gets_452_while_the_spool_lacks_room(
    ctx: WorkerContext, disk: Disk, caplog: pytest.LogCaptureFixture
) -> None:
    disk.avail = RESERVE - 4096
    conn = greeted(ctx)
    conn.send(TRANSACTION + b"Subject: x\r\n\r\nhi\r\n.\r\n")  # all of it pipelined
    # 452 at MAIL; the rest of the transaction has no MAIL to belong to (RFC 2920 §3.1),
    # and the message lines after DATA's 503 are commands nobody knows
    assert conn.replies()[:3] == [
        replies.INSUFFICIENT_STORAGE,
        replies.NEED_MAIL,
        replies.NEED_MAIL,
    ]
    assert replies.INSUFFICIENT_STORAGE == b"452 4.3.1 Insufficient system storage\r\n"
    assert queued(ctx.spool) == [] and ctx.spool.list("tmp") == []
    assert ctx.stats.rejects == {"insufficient_storage": 1}
    (line,) = [r.getMessage() for r in caplog.records if "NOQUEUE" in r.getMessage()]
    assert line == (
        f"{REFUSAL}; from=<a@client.test> size=0: {RESERVE - 4096} bytes free, {RESERVE} needed"
    )


def test_a_declared_size_that_does_not_fit_gets_452_at_mail(
    ctx: WorkerContext, disk: Disk, caplog: pytest.LogCaptureFixture
) -> None:
    disk.avail = RESERVE + 100 * 4096  # room for a message of 400 KiB, not for one of 500
    conn = greeted(ctx)
    conn.send(b"MAIL FROM:<big@client.test> SIZE=512000\r\n")
    assert conn.replies() == [replies.INSUFFICIENT_STORAGE]
    # over the fixed limit: the session's permanent 552 comes first, room or not
    conn.send(b"MAIL FROM:<huge@client.test> SIZE=%d\r\n" % (MAX_SIZE + 1))
    assert conn.codes() == [b"552"]
    conn.send(b"MAIL FROM:<small@client.test> SIZE=409600\r\nRCPT TO:<b@example.org>\r\n")
    assert conn.replies() == [replies.OK_SENDER, replies.OK_RECIPIENT]
    assert ctx.stats.rejects == {"insufficient_storage": 1}
    assert f"from=<big@client.test> size=512000: {RESERVE + 409600} bytes free" in caplog.text


def test_the_relay_accepts_again_by_itself_once_space_is_back(
    ctx: WorkerContext, disk: Disk, loop: ClockLoop
) -> None:
    opened = greeted(ctx)
    opened.send(MAIL)  # a transaction opened while there was room
    assert opened.codes() == [b"250"]
    disk.avail = 0
    loop.advance(MAX_AGE)  # a full disk is seen within MAX_AGE
    conn = greeted(ctx)
    conn.send(MAIL)
    assert conn.replies() == [replies.INSUFFICIENT_STORAGE]
    # The check is at MAIL: a transaction past it is not refused halfway; if the disk
    # really is full, the commit's 451 says so (this fake one is not).
    opened.send(b"RCPT TO:<b@example.org>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n")
    assert opened.codes() == [b"250", b"354"]
    loop.run_until(opened.has_output)
    assert opened.codes() == [b"250"]
    disk.avail = 100 * MiB
    conn.send(MAIL)
    assert conn.replies() == [replies.INSUFFICIENT_STORAGE]  # measured less than MAX_AGE ago
    loop.advance(MAX_AGE)
    conn.send(TRANSACTION)  # same connection, no restart, no HUP
    assert conn.codes() == [b"250", b"250", b"354"]


def test_one_statvfs_per_max_age_however_many_commands(
    ctx: WorkerContext, disk: Disk, loop: ClockLoop
) -> None:
    connections = [greeted(ctx) for _ in range(20)]
    for conn in connections:
        conn.send((MAIL + b"RSET\r\n") * 10)
        assert conn.codes() == [b"250", b"250"] * 10
    assert disk.calls == 1  # 200 MAIL commands, one measurement
    loop.advance(MAX_AGE)
    connections[0].send(MAIL)
    assert disk.calls == 2


def test_a_flood_of_refusals_is_logged_ten_a_second_and_counted_whole(
    ctx: WorkerContext, disk: Disk, loop: ClockLoop, caplog: pytest.LogCaptureFixture
) -> None:
    disk.avail = 0
    for _ in range(30):
        conn = greeted(ctx)
        conn.send(MAIL)
        assert conn.replies() == [replies.INSUFFICIENT_STORAGE]
    assert ctx.stats.rejects == {"insufficient_storage": 30}
    lines = [r for r in caplog.records if "NOQUEUE" in r.getMessage()]
    assert len(lines) == 10
    assert all(r.levelno == logging.WARNING for r in lines)
    loop.advance(1.0)
    caplog.clear()
    greeted(ctx).send(MAIL)
    (line,) = [r.getMessage() for r in caplog.records if "NOQUEUE" in r.getMessage()]
    assert line.endswith(" (20 more such refusals not logged)")
    assert ctx.stats.rejects == {"insufficient_storage": 31}
