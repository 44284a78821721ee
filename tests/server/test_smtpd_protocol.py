"""SMTPProtocol in the test process: a fake transport, a real spool and group committer, a
real event loop with a clock the test moves (fake_io.py).

These are the fast tests of what smtpd adds to the sans-I/O session: writing each batch of
replies at once, policy, the spool file and the durable commit before ``250``, flow
control, the idle timer, the shutdown, and what a vanished client leaves behind.  The
subprocess tests (test_smtpd_e2e.py, test_smtpd_limits.py) show the same over real
sockets and a real process tree.  The parser backend is the one the server would choose
(``MTA_NO_EXTENSIONS=1`` makes it the pure-Python twin).
"""

from __future__ import annotations

import errno
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mta.protocol import replies
from mta.protocol.session import ParserBackend
from mta.queue.spool import IN_MEMORY_MAX, MessageWriter, Spool
from mta.server.context import WorkerContext
from tests.server.fake_io import ClockLoop, Connection, HeldCommitter, make_context

pytestmark = pytest.mark.timeout(30)

Start = Callable[..., WorkerContext]
TRANSACTION = b"MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
MESSAGE = b"Subject: fast\r\n\r\nhello\r\n..a dot\r\n"
_QUEUED = re.compile(rb"^250 2\.0\.0 Ok: queued as ([0-9A-F]{19})\r\n$")


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(str(tmp_path / "spool"))


@pytest.fixture
def start(loop: ClockLoop, spool: Spool, parser: ParserBackend) -> Iterator[Start]:
    """Make a worker context (``smtp`` settings as keyword arguments); stopped afterwards."""
    made: list[WorkerContext] = []

    def start(**smtp: Any) -> WorkerContext:
        made.append(make_context(loop, spool, parser, **smtp))
        return made[-1]

    yield start
    for ctx in made:
        ctx.committer.stop()


@pytest.fixture
def ctx(start: Start) -> WorkerContext:
    return start()


def committer(ctx: WorkerContext) -> HeldCommitter:
    assert isinstance(ctx.committer, HeldCommitter)
    return ctx.committer


def greeted(ctx: WorkerContext, peer: str = "127.0.0.1") -> Connection:
    conn = Connection(ctx, peer)
    assert conn.replies() == [b"220 mx.test ESMTP mta\r\n"]
    conn.send(b"EHLO client.test\r\n")
    assert conn.codes() == [b"250"]
    return conn


def in_data(ctx: WorkerContext) -> Connection:
    conn = greeted(ctx)
    conn.send(TRANSACTION)
    assert conn.codes() == [b"250", b"250", b"354"]
    return conn


def queue_id_of(reply: bytes) -> str:
    match = _QUEUED.match(reply)
    assert match, f"not a queued reply: {reply!r}"
    return match.group(1).decode()


def queued(spool: Spool) -> set[str]:
    """Every message the spool holds as accepted (segments and files)."""
    names = {ref.queue_id for ref in Spool(spool.path).segment_messages()}
    for state in ("incoming", "active", "deferred"):
        names.update(spool.list(state))
    return names


def assert_nothing_left(ctx: WorkerContext, budget: int) -> None:
    """No message, no temporary file, no memory held for one."""
    assert queued(ctx.spool) == set()
    assert ctx.spool.list("tmp") == []
    assert ctx.spool.memory.free == budget
    assert committer(ctx).held == []


# ----- greeting, EHLO, policy -------------------------------------------------------------


def test_greeting_and_ehlo_each_in_one_write(ctx: WorkerContext) -> None:
    conn = Connection(ctx)
    assert conn.writes() == [b"220 mx.test ESMTP mta\r\n"]
    conn.send(b"EHLO client.test\r\n")
    (ehlo,) = conn.writes()
    assert ehlo == (
        b"250-mx.test\r\n250-PIPELINING\r\n250-SIZE 26214400\r\n250-8BITMIME\r\n"
        b"250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n250 DSN\r\n"
    )
    assert ctx.connections == {conn.protocol}


def test_quit_closes_and_the_connection_is_forgotten(ctx: WorkerContext, loop: ClockLoop) -> None:
    conn = greeted(ctx)
    conn.send(b"QUIT\r\n")
    assert conn.replies() == [b"221 2.0.0 mx.test Bye\r\n"]
    assert conn.transport.closed
    loop.run_until(lambda: not ctx.connections)
    assert ctx.stats.opened == 1


def test_relay_is_denied_to_an_outside_client(ctx: WorkerContext) -> None:
    conn = greeted(ctx, peer="192.0.2.7")
    conn.send(b"MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.org>\r\nRCPT TO:<postmaster>\r\n")
    denied = b"554 5.7.1 <b@example.org>: Relay access denied\r\n"  # Postfix's wording
    assert conn.replies() == [replies.OK_SENDER, denied, replies.OK_RECIPIENT]
    assert ctx.stats.rejects == {"relay_denied": 1}


def test_relay_is_allowed_to_a_local_client(ctx: WorkerContext) -> None:
    conn = greeted(ctx, peer="127.0.0.1")
    conn.send(b"MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.org>\r\n")
    assert conn.replies() == [replies.OK_SENDER, replies.OK_RECIPIENT]


def test_connections_beyond_the_limit_get_421(start: Start, loop: ClockLoop) -> None:
    ctx = start(max_connections=2)
    first, _second = Connection(ctx), Connection(ctx)
    extra = Connection(ctx)
    assert extra.replies() == [b"421 4.7.0 mx.test Error: too many connections\r\n"]
    assert extra.transport.closed
    first.send(b"QUIT\r\n")
    loop.run_until(lambda: len(ctx.connections) == 1)
    assert Connection(ctx).codes() == [b"220"]  # a slot is free again


def test_long_line_is_not_answered_before_it_ends(ctx: WorkerContext) -> None:
    conn = greeted(ctx)
    conn.send(b"NOOP " + b"A" * 100_000)
    assert conn.writes() == []
    assert conn.protocol.session.buffered < 4096  # not kept either
    conn.send(b"\r\nNOOP\r\n")
    assert conn.writes() == [replies.LINE_TOO_LONG + replies.OK]


# ----- a message, durably -----------------------------------------------------------------


@pytest.mark.parametrize("size", [100, IN_MEMORY_MAX + 100], ids=["segment", "file"])
def test_250_only_after_the_commit_and_the_message_is_in_the_spool(
    ctx: WorkerContext, loop: ClockLoop, size: int
) -> None:
    body = MESSAGE + b"x" * (size - len(MESSAGE) - 2) + b"\r\n"
    conn = in_data(ctx)
    committer(ctx).holding = True
    conn.send(body + b".\r\n")
    assert conn.writes() == []  # the message is not durable yet: no 250
    assert len(committer(ctx).held) == 1
    assert queued(ctx.spool) == set()
    committer(ctx).release()
    loop.run_until(conn.has_output)
    (reply,) = conn.replies()
    queue_id = queue_id_of(reply)
    assert queued(ctx.spool) == {queue_id}
    found = Spool(ctx.spool.path).find(queue_id)  # read back as another process would
    assert found is not None
    state, message_file = found
    assert state == ("incoming" if size > IN_MEMORY_MAX else "active")  # active: a segment
    envelope = message_file.envelope
    assert (envelope.sender, [r.address for r in envelope.recipients]) == (
        "a@client.test",
        ["b@example.org"],
    )
    assert envelope.client_address == "127.0.0.1" and envelope.client_helo == "client.test"
    data = message_file.read_message()
    assert data.startswith(b"Received: from client.test ([127.0.0.1])\r\n\tby mx.test (mta)")
    assert data.endswith(b"\r\n" + body.replace(b"\r\n..", b"\r\n."))
    assert ctx.spool.list("tmp") == []
    assert (ctx.stats.received, ctx.stats.received_bytes) == (1, envelope.size)


def test_failed_commit_is_451_and_nothing_stays(ctx: WorkerContext, loop: ClockLoop) -> None:
    budget = ctx.spool.memory.free
    conn = in_data(ctx)
    committer(ctx).holding = True
    conn.send(MESSAGE + b".\r\n")
    committer(ctx).release(OSError(errno.EIO, "flush failed"))
    assert conn.replies() == [replies.LOCAL_ERROR]
    assert_nothing_left(ctx, budget)
    conn.send(TRANSACTION)  # the session goes on
    assert conn.codes() == [b"250", b"250", b"354"]


class FailingWriter(MessageWriter):
    """A message file whose disk fills up after the trace header."""

    def write(self, data: bytes) -> None:
        if data.startswith(b"Received: "):
            super().write(data)
        else:
            raise OSError(errno.ENOSPC, "No space left on device")


def test_write_error_in_data_is_451_after_the_terminator(
    ctx: WorkerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    budget = ctx.spool.memory.free
    monkeypatch.setattr(Spool, "new_message", lambda spool, qid: FailingWriter(spool, qid))
    conn = in_data(ctx)
    conn.send(MESSAGE + b"more\r\n")
    assert conn.writes() == []  # read on to the end of the data before answering
    conn.send(b"the rest\r\n.\r\nNOOP\r\n")
    assert conn.replies() == [replies.LOCAL_ERROR, replies.OK]
    assert_nothing_left(ctx, budget)


def test_spool_file_that_cannot_be_made_is_451_at_data(
    ctx: WorkerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(spool: Spool, queue_id: str) -> MessageWriter:
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(Spool, "new_message", fail)
    conn = greeted(ctx)
    conn.send(TRANSACTION)
    assert conn.replies() == [replies.OK_SENDER, replies.OK_RECIPIENT, replies.LOCAL_ERROR]


# ----- pipelining and flow control ---------------------------------------------------------


def test_pipelined_batch_is_answered_with_one_write(ctx: WorkerContext, loop: ClockLoop) -> None:
    conn = greeted(ctx)
    conn.send(TRANSACTION.replace(b"DATA", b"RCPT TO:<c@example.org>\r\nDATA"))
    assert conn.writes() == [
        replies.OK_SENDER + replies.OK_RECIPIENT + replies.OK_RECIPIENT + replies.START_DATA
    ]
    # the end of a message and the next transaction: answered together, after the commit
    conn.send(MESSAGE + b".\r\n" + TRANSACTION)
    loop.run_until(conn.has_output)
    (write,) = conn.writes()
    assert write.endswith(replies.OK_SENDER + replies.OK_RECIPIENT + replies.START_DATA)
    queue_id_of(write[: write.index(b"\r\n") + 2])


def test_reading_pauses_behind_a_pending_commit_and_resumes(
    ctx: WorkerContext, loop: ClockLoop
) -> None:
    conn = in_data(ctx)
    committer(ctx).holding = True
    big = b"y" * 100 + b"\r\n"
    second = TRANSACTION + MESSAGE + big * 12_000 + b".\r\n"  # more than 1 MiB waiting
    conn.send(MESSAGE + b".\r\n" + second)
    assert not conn.transport.reading  # the client pipelines faster than we commit
    assert conn.writes() == []
    committer(ctx).release()
    loop.run_until(lambda: conn.transport.reading)
    assert conn.transport.pauses == 1
    loop.run_until(lambda: len(queued(ctx.spool)) == 2)
    loop.run_until(lambda: b"".join(conn.transport.writes).count(b"queued as") == 2)
    codes = conn.codes()
    assert codes == [b"250", b"250", b"250", b"354", b"250"]


def test_a_full_write_buffer_pauses_reading(ctx: WorkerContext) -> None:
    conn = greeted(ctx)
    conn.protocol.pause_writing()
    assert not conn.transport.reading
    conn.protocol.resume_writing()
    assert conn.transport.reading


# ----- clients that vanish -----------------------------------------------------------------


@pytest.mark.parametrize("size", [2_000, 2_000_000], ids=["small", "large"])
def test_client_vanishing_mid_data_leaves_nothing(
    ctx: WorkerContext, loop: ClockLoop, size: int
) -> None:
    budget = ctx.spool.memory.free
    conn = in_data(ctx)
    line = b"a line of a message that will never end\r\n"
    conn.send(MESSAGE + line * (size // len(line)))
    if size > IN_MEMORY_MAX:  # streamed to a file of its own
        assert len(ctx.spool.list("tmp")) == 1
    conn.lose(ConnectionResetError())
    assert_nothing_left(ctx, budget)
    assert ctx.connections == set()
    loop.advance(1.0)  # nothing turns up later either
    assert_nothing_left(ctx, budget)


def test_client_vanishing_during_the_commit_loses_nothing(
    ctx: WorkerContext, loop: ClockLoop
) -> None:
    """The message was complete: it is kept (the client may send it again; a duplicate is
    possible, a loss is not), and nothing is written to the closed connection."""
    conn = in_data(ctx)
    committer(ctx).holding = True
    conn.send(MESSAGE + b".\r\n")
    conn.lose(None)
    committer(ctx).release()
    loop.run_until(lambda: len(queued(ctx.spool)) == 1)
    loop.run_until(lambda: ctx.stats.received == 1)
    assert conn.writes() == []


# ----- idle timeout ------------------------------------------------------------------------


def test_idle_client_gets_421(start: Start, loop: ClockLoop) -> None:
    ctx = start(idle_timeout=300)
    conn = greeted(ctx)
    loop.advance(299)
    assert conn.writes() == []
    loop.advance(2)
    assert conn.replies() == [b"421 4.4.2 mx.test Error: timeout exceeded\r\n"]
    assert conn.transport.closed
    loop.run_until(lambda: not ctx.connections)


def test_busy_client_is_not_timed_out(start: Start, loop: ClockLoop) -> None:
    ctx = start(idle_timeout=300)
    conn = greeted(ctx)
    for _ in range(5):  # 1,000 seconds, never 300 of silence
        loop.advance(200)
        conn.send(b"NOOP\r\n")
        assert conn.replies() == [replies.OK]
    assert not conn.transport.closed


def test_idle_timeout_mid_data_discards_the_message(start: Start, loop: ClockLoop) -> None:
    ctx = start(idle_timeout=300)
    budget = ctx.spool.memory.free
    conn = in_data(ctx)
    conn.send(MESSAGE + b"x" * (IN_MEMORY_MAX + 10))
    assert len(ctx.spool.list("tmp")) == 1
    loop.advance(301)
    assert conn.codes() == [b"421"]
    loop.run_until(lambda: not ctx.connections)
    assert_nothing_left(ctx, budget)


def test_a_slow_commit_is_not_the_clients_idleness(start: Start, loop: ClockLoop) -> None:
    ctx = start(idle_timeout=300)
    conn = in_data(ctx)
    committer(ctx).holding = True
    conn.send(MESSAGE + b".\r\n")
    loop.advance(301)  # we are the slow one: no 421
    assert conn.writes() == []
    committer(ctx).release()
    loop.run_until(conn.has_output)
    queue_id_of(conn.replies()[0])


# ----- shutdown ----------------------------------------------------------------------------


def test_shutdown_says_421_to_idle_sessions_and_lets_transactions_finish(
    ctx: WorkerContext, loop: ClockLoop
) -> None:
    idle = greeted(ctx)
    busy = in_data(ctx)
    ctx.begin_shutdown()
    shutting_down = b"421 4.3.2 mx.test Service shutting down, closing transmission channel\r\n"
    assert idle.replies() == [shutting_down]
    assert idle.transport.closed
    assert busy.writes() == [] and not busy.transport.closed
    busy.send(MESSAGE + b".\r\n")
    loop.run_until(lambda: busy.transport.closed)
    ok, bye = busy.replies()
    assert bye == shutting_down
    assert queued(ctx.spool) == {queue_id_of(ok)}
    late = Connection(ctx)  # accepted just before the listener closed
    assert late.codes() == [b"220", b"421"]
    loop.run_until(lambda: not ctx.connections)
