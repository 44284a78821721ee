"""The connect stage (smtpd._open): checks awaited before the greeting may refuse the
connection instead of greeting it; input the client sends meanwhile is kept, not lost."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from mta.protocol import replies
from mta.protocol.session import ParserBackend
from mta.queue.spool import Spool
from mta.server.context import WorkerContext
from mta.server.smtpd import SMTPProtocol
from tests.server.fake_io import ClockLoop, Connection, make_context

pytestmark = pytest.mark.timeout(30)

REFUSAL = replies.reply(421, "4.7.0 mx.test Error: too many connections from 127.0.0.1")


@pytest.fixture
def ctx(loop: ClockLoop, tmp_path: Path, parser: ParserBackend) -> Iterator[WorkerContext]:
    ctx = make_context(loop, Spool(str(tmp_path / "spool")), parser)
    yield ctx
    ctx.committer.stop()


def run(loop: ClockLoop) -> None:
    loop.run_until_complete(asyncio.sleep(0.01))


def test_a_refusing_check_replaces_the_greeting(ctx: WorkerContext, loop: ClockLoop) -> None:
    seen: list[str] = []

    async def refuse(protocol: SMTPProtocol) -> bytes | None:
        seen.append(protocol.client_ip)
        return REFUSAL

    ctx.connect_checks.append(refuse)
    conn = Connection(ctx, "192.0.2.7")
    conn.send(b"EHLO early.test\r\n")
    run(loop)
    assert seen == ["192.0.2.7"]
    assert conn.replies() == [REFUSAL]
    assert conn.transport.closed


def test_the_greeting_waits_for_the_checks_and_early_input_is_kept(
    ctx: WorkerContext, loop: ClockLoop
) -> None:
    release = asyncio.Event()

    async def slow_allow(protocol: SMTPProtocol) -> bytes | None:
        await release.wait()
        return None

    ctx.connect_checks.append(slow_allow)
    conn = Connection(ctx)
    conn.send(b"EHLO client.test\r\n")
    run(loop)
    assert conn.replies() == []  # no greeting while the check runs
    release.set()
    run(loop)
    assert conn.codes() == [b"220", b"250"]


def test_a_client_gone_before_the_checks_end_is_not_greeted(
    ctx: WorkerContext, loop: ClockLoop
) -> None:
    release = asyncio.Event()

    async def slow_allow(protocol: SMTPProtocol) -> bytes | None:
        await release.wait()
        return None

    ctx.connect_checks.append(slow_allow)
    conn = Connection(ctx)
    conn.transport.close()
    run(loop)
    release.set()
    run(loop)
    assert conn.replies() == []
    assert not ctx.connections
