"""smtpd and the per-client limiter over a fake transport: the connect check before the
greeting, its count released when the connection closes, and MAIL and RCPT answered only
when the limiter has answered (a store that takes its time), with Postfix's replies."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from mta.policy.counters import Kind
from mta.policy.limits import Limiter, LocalStore
from mta.protocol.session import ParserBackend
from mta.queue.spool import Spool
from mta.server.context import WorkerContext
from tests.server.fake_io import ClockLoop, Connection, make_context

pytestmark = pytest.mark.timeout(30)

CLIENT = "192.0.2.7"


class SlowStore(LocalStore):
    """A store that must always be asked, and answers only when the test lets it
    (``gate``)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def add(self, kind: Kind, client: str, amount: int) -> int:
        await self.gate.wait()
        return await super().add(kind, client, amount)

    def add_now(self, kind: Kind, client: str, amount: int, ceiling: int) -> int | None:
        return None


@pytest.fixture
def store() -> SlowStore:
    return SlowStore()


@pytest.fixture
def ctx(
    loop: ClockLoop, tmp_path: Path, parser: ParserBackend, store: SlowStore
) -> Iterator[WorkerContext]:
    ctx = make_context(loop, Spool(str(tmp_path / "spool")), parser)
    ctx.limiter = Limiter(store, "mx.test", connections=1, message_rate=1, recipient_rate=1)
    ctx.connect_checks.append(ctx._limit_connection)
    yield ctx
    ctx.committer.stop()


def run(loop: ClockLoop) -> None:
    loop.run_until_complete(asyncio.sleep(0.01))


def test_a_connection_over_the_limit_is_refused_until_one_closes(
    ctx: WorkerContext, loop: ClockLoop
) -> None:
    first = Connection(ctx, CLIENT)
    run(loop)
    assert first.codes() == [b"220"]
    second = Connection(ctx, CLIENT)
    run(loop)
    assert second.replies() == [b"421 4.7.0 mx.test Error: too many connections from 192.0.2.7\r\n"]
    assert second.transport.closed
    other = Connection(ctx, "192.0.2.8")  # another address
    run(loop)
    assert other.codes() == [b"220"]
    first.lose()
    third = Connection(ctx, CLIENT)
    run(loop)
    assert third.codes() == [b"220"]


def test_mail_and_rcpt_wait_for_the_limiter(
    ctx: WorkerContext, loop: ClockLoop, store: SlowStore
) -> None:
    conn = Connection(ctx, CLIENT)
    run(loop)
    conn.send(b"EHLO c.test\r\nMAIL FROM:<a@c.test>\r\nRCPT TO:<postmaster>\r\n")
    run(loop)
    assert conn.codes() == [b"220", b"250"]  # MAIL waits for the store, RCPT behind it
    store.gate.set()
    run(loop)
    assert conn.codes() == [b"250", b"250"]
    conn.send(b"RCPT TO:<postmaster>\r\nRSET\r\nMAIL FROM:<a@c.test>\r\n")
    run(loop)
    assert conn.replies() == [
        b"450 4.7.1 Error: too many recipients from 192.0.2.7\r\n",
        b"250 2.0.0 Ok\r\n",
        b"450 4.7.1 Error: too much mail from 192.0.2.7\r\n",
    ]
    assert ctx.stats.rejects == {"recipient_rate": 1, "message_rate": 1}


def test_a_local_store_answers_without_waiting(ctx: WorkerContext, loop: ClockLoop) -> None:
    ctx.limiter = Limiter(LocalStore(), "mx.test", message_rate=1)
    conn = Connection(ctx, CLIENT)
    run(loop)
    conn.send(b"HELO c.test\r\nMAIL FROM:<a@c.test>\r\nRSET\r\nMAIL FROM:<a@c.test>\r\n")
    assert conn.codes() == [b"220", b"250", b"250", b"250", b"450"]  # at once: no loop turn


def test_a_client_that_leaves_while_the_limiter_thinks_is_forgotten(
    ctx: WorkerContext, loop: ClockLoop, store: SlowStore
) -> None:
    conn = Connection(ctx, CLIENT)
    run(loop)
    conn.send(b"HELO c.test\r\nMAIL FROM:<a@c.test>\r\n")
    run(loop)
    conn.lose()
    store.gate.set()
    run(loop)  # the answer finds no connection: nothing is written, nothing breaks
    assert conn.codes() == [b"220", b"250"]
    assert store.counters.open(CLIENT) == 0
