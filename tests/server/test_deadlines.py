"""Deadlines that trickled bytes do not push back, stress mode and node-wide admission, in
the test process (fake_io.py: a fake transport and a loop clock the test moves).

A slowloris client sends a byte just often enough to beat the idle timeout; these tests
show that the command deadline, the DATA deadline (with its minimum rate) and the session
deadline cut it off anyway, that nothing of a cut-off message is queued, and that the
timeouts drop in stress mode.  tests/faults/test_slowloris.py shows the same over real
sockets and a real process tree.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from mta.protocol import replies
from mta.protocol.session import ParserBackend
from mta.queue.spool import Spool
from mta.server.context import WorkerContext, fd_ceiling
from tests.server.fake_io import ClockLoop, Connection, make_context

pytestmark = pytest.mark.timeout(30)

Start = Callable[..., WorkerContext]
TIMEOUT = b"421 4.4.2 mx.test Error: timeout exceeded\r\n"
TRANSACTION = b"MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"


@pytest.fixture
def start(loop: ClockLoop, tmp_path: Path, parser: ParserBackend) -> Iterator[Start]:
    made: list[WorkerContext] = []

    def start(**smtp: Any) -> WorkerContext:
        made.append(make_context(loop, Spool(str(tmp_path / "spool")), parser, **smtp))
        return made[-1]

    yield start
    for ctx in made:
        ctx.committer.stop()


def greeted(ctx: WorkerContext) -> Connection:
    conn = Connection(ctx)
    assert conn.codes() == [b"220"]
    conn.send(b"EHLO client.test\r\n")
    assert conn.codes() == [b"250"]
    return conn


def trickle(loop: ClockLoop, conn: Connection, chunk: bytes, every: float, times: int) -> float:
    """Send ``chunk`` every ``every`` seconds until the server closes: ``n * every`` if it
    closed during the n-th wait, ``times * every`` if it never did."""
    for n in range(1, times + 1):
        loop.advance(every)
        if conn.transport.closed:
            return n * every
        conn.send(chunk)
    return times * every


def queued(spool: Spool) -> list[str]:
    names = [ref.queue_id for ref in spool.segment_messages()]
    return names + [name for state in ("tmp", "incoming", "active") for name in spool.list(state)]


# ----- the command deadline --------------------------------------------------------------


def test_a_trickled_command_line_is_cut_off_at_its_deadline(start: Start, loop: ClockLoop) -> None:
    ctx = start(idle_timeout=30, command_timeout=60)
    conn = greeted(ctx)
    conn.send(b"N")
    lasted = trickle(loop, conn, b"O", every=10, times=30)  # never 30 s without a byte
    assert lasted == 70  # cut off between 60 and 70 seconds
    assert conn.replies() == [TIMEOUT]
    loop.run_until(lambda: not ctx.connections)


def test_each_complete_command_gets_a_deadline_of_its_own(start: Start, loop: ClockLoop) -> None:
    ctx = start(idle_timeout=300, command_timeout=60)
    conn = greeted(ctx)
    for _ in range(10):  # 500 seconds of commands, each sent whole
        loop.advance(50)
        conn.send(b"NOOP\r\n")
        assert conn.replies() == [replies.OK]
    conn.send(b"NOOP\r\nNO")  # the rest of a pipelined batch starts the next deadline now
    assert conn.replies() == [replies.OK]
    loop.advance(59)
    conn.send(b"OP\r\n")
    assert conn.replies() == [replies.OK]
    assert not conn.transport.closed


# ----- the DATA deadline -----------------------------------------------------------------


def test_trickled_data_is_cut_off_and_nothing_is_queued(start: Start, loop: ClockLoop) -> None:
    ctx = start(idle_timeout=30, command_timeout=60, min_data_rate=500)
    conn = greeted(ctx)
    conn.send(TRANSACTION)
    assert conn.codes() == [b"250", b"250", b"354"]
    conn.send(b"Subject: slow\r\n\r\n")
    lasted = trickle(loop, conn, b"x" * 100, every=10, times=30)  # 10 B/s, far below 500
    assert lasted == 70  # 60 s, plus a second for the 600 octets
    assert conn.replies() == [TIMEOUT]
    loop.run_until(lambda: not ctx.connections)
    assert queued(ctx.spool) == []


def test_data_at_the_minimum_rate_has_the_time_it_needs(start: Start, loop: ClockLoop) -> None:
    ctx = start(idle_timeout=30, command_timeout=60, min_data_rate=500)
    conn = greeted(ctx)
    conn.send(TRANSACTION)
    assert conn.codes() == [b"250", b"250", b"354"]
    lasted = trickle(loop, conn, b"x" * 998 + b"\r\n", every=2, times=100)  # 500 B/s, 200 s
    assert lasted == 200
    conn.send(b".\r\n")
    loop.run_until(conn.has_output)
    assert conn.codes() == [b"250"]


# ----- the session deadline --------------------------------------------------------------


def test_a_busy_session_ends_at_the_session_deadline(start: Start, loop: ClockLoop) -> None:
    ctx = start(idle_timeout=30, command_timeout=60, session_timeout=100)
    conn = greeted(ctx)
    lasted = trickle(loop, conn, b"NOOP\r\n", every=15, times=20)
    assert lasted == 105  # cut off between 90 and 105 seconds: at 100
    assert conn.replies()[-1] == TIMEOUT


# ----- stress mode -----------------------------------------------------------------------


def _stress_gauge() -> float | None:
    return REGISTRY.get_sample_value("mta_smtpd_stress")


def test_stress_mode_shortens_the_timeouts_of_every_session(
    start: Start, loop: ClockLoop, caplog: pytest.LogCaptureFixture
) -> None:
    ctx = start(max_connections=10, stress_threshold=0.5, idle_timeout=300, stress_timeout=10)
    caplog.set_level(logging.WARNING, "mta.smtpd")
    calm = [greeted(ctx) for _ in range(4)]
    loop.advance(11)
    assert not ctx.stressed and all(not c.transport.closed for c in calm)
    stressed = greeted(ctx)  # the fifth of ten: half the limit
    assert ctx.stressed and _stress_gauge() == 1
    loop.advance(11)  # the sessions that were open before count in seconds now too
    for conn in [*calm, stressed]:
        assert conn.replies() == [TIMEOUT]
    loop.run_until(lambda: not ctx.connections)
    ctx.check_stress()
    assert not ctx.stressed and _stress_gauge() == 0
    said = [r.getMessage() for r in caplog.records if "stress mode" in r.getMessage()]
    assert len(said) == 2 and said[0].startswith("entering") and said[1].startswith("leaving")


# ----- admission -------------------------------------------------------------------------


class OtherWorkers:
    """A node counter that sees ``others`` connections in other workers."""

    def __init__(self, others: int) -> None:
        self.others = others
        self.mine = 0

    def set_mine(self, count: int) -> None:
        self.mine = count

    def total(self) -> int:
        return self.others + self.mine

    def sweep(self) -> int:
        return 0

    def close(self) -> None:
        pass


def test_the_connection_limit_counts_the_other_workers(start: Start, loop: ClockLoop) -> None:
    ctx = start(max_connections=10)
    ctx.counter = counter = OtherWorkers(9)
    first = greeted(ctx)
    refused = Connection(ctx)
    assert refused.replies() == [b"421 4.7.0 mx.test Error: too many connections\r\n"]
    assert refused.transport.closed
    loop.run_until(lambda: counter.mine == 1)  # the refused one never counted
    assert ctx.connections == {first.protocol}


def test_a_client_beyond_the_descriptor_ceiling_hears_421(start: Start, loop: ClockLoop) -> None:
    ctx = start()
    ctx.max_fd = fd_ceiling(256)
    conn = Connection(ctx, socket_fd=ctx.max_fd + 1)  # all descriptors below it are in use
    assert conn.replies() == [b"421 4.3.2 mx.test Error: too many open files\r\n"]
    assert conn.transport.closed and not ctx.connections
    assert Connection(ctx, socket_fd=ctx.max_fd).codes() == [b"220"]
