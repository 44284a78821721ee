"""smtpd's PROXY stage over a fake transport: the header is read before the greeting, only
from smtp.proxy_networks, within smtp.proxy_timeout, and its source is the client from then
on (relay control, leniency, logs, the envelope); each listener gets its own rules."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from mta.protocol.proxy import V2_SIGNATURE
from mta.protocol.session import ParserBackend
from mta.queue.spool import Spool
from mta.server.context import WorkerContext
from mta.server.listeners import ListenerState
from tests.server.fake_io import ClockLoop, Connection, make_context

pytestmark = pytest.mark.timeout(30)

BALANCER = "127.0.0.3"
HEADER = b"PROXY TCP4 192.0.2.7 127.0.0.3 40000 25\r\n"
RELAYED = b"MAIL FROM:<a@client.test>\r\nRCPT TO:<b@elsewhere.test>\r\n"


@pytest.fixture
def ctx(loop: ClockLoop, tmp_path: Path, parser: ParserBackend) -> Iterator[WorkerContext]:
    sections = {
        "relay": {"networks": ["192.0.2.0/24"]},  # the proxied client may relay, the balancer not
        "listeners": {
            "mx": {"listen": ["127.0.0.1:2525"]},
            "edge": {"listen": ["127.0.0.1:2526"], "proxy_protocol": True},
        },
    }
    ctx = make_context(
        loop,
        Spool(str(tmp_path / "spool")),
        parser,
        sections,
        proxy_networks=["127.0.0.3/32"],
        normalize_networks=["192.0.2.0/24"],
    )
    yield ctx
    ctx.committer.stop()


def edge(ctx: WorkerContext) -> ListenerState:
    state = ctx.listeners[1]
    assert state.name == "edge"
    return state


def run(loop: ClockLoop) -> None:
    loop.run_until_complete(asyncio.sleep(0.01))


def test_the_header_source_is_the_client_for_relay_control(
    ctx: WorkerContext, loop: ClockLoop, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "mta.smtpd")
    conn = Connection(ctx, BALANCER, listener=edge(ctx))
    conn.send(HEADER + b"EHLO client.test\r\n" + RELAYED)  # one packet: nothing is lost
    run(loop)
    assert conn.codes() == [b"220", b"250", b"250", b"250"]
    protocol = conn.protocol
    assert (protocol.client_ip, protocol.client_port, protocol.proxied_by) == (
        "192.0.2.7",
        40000,
        BALANCER,
    )
    assert protocol.session.limits.normalize_bare_line_endings  # leniency: the real client
    assert "connect from unknown[192.0.2.7] via [127.0.0.3] on edge" in caplog.text


def test_without_proxy_protocol_the_socket_address_counts(
    ctx: WorkerContext, loop: ClockLoop
) -> None:
    conn = Connection(ctx, BALANCER, listener=ctx.listeners[0])  # "mx": no PROXY header
    conn.send(b"EHLO client.test\r\n" + RELAYED)
    run(loop)
    assert conn.codes() == [b"220", b"250", b"250", b"554"]  # relay denied for 127.0.0.3


def test_a_header_byte_by_byte_then_the_greeting(ctx: WorkerContext, loop: ClockLoop) -> None:
    conn = Connection(ctx, BALANCER, listener=edge(ctx))
    for i in range(len(HEADER) - 1):
        conn.send(HEADER[i : i + 1])
        run(loop)
        assert conn.replies() == []
    conn.send(HEADER[-1:] + b"EHLO client.test\r\n")
    run(loop)
    assert conn.codes() == [b"220", b"250"]
    assert conn.protocol.client_ip == "192.0.2.7"


def test_v2_local_keeps_the_balancer_address(ctx: WorkerContext, loop: ClockLoop) -> None:
    conn = Connection(ctx, BALANCER, listener=edge(ctx))
    conn.send(V2_SIGNATURE + b"\x20\x00" + struct.pack("!H", 0))  # a health check
    run(loop)
    assert conn.codes() == [b"220"]
    assert (conn.protocol.client_ip, conn.protocol.proxied_by) == (BALANCER, "")


def test_v2_tcp6(ctx: WorkerContext, loop: ClockLoop) -> None:
    addresses = bytes.fromhex("20010db8" + "00" * 11 + "07") + bytes(15) + b"\x01"
    conn = Connection(ctx, BALANCER, listener=edge(ctx))
    conn.send(V2_SIGNATURE + b"\x21\x21" + struct.pack("!H", 36) + addresses + bytes(4))
    run(loop)
    assert conn.codes() == [b"220"]
    assert conn.protocol.client_ip == "2001:db8::7"


def test_unknown_keeps_the_socket_address(ctx: WorkerContext, loop: ClockLoop) -> None:
    conn = Connection(ctx, BALANCER, listener=edge(ctx))
    conn.send(b"PROXY UNKNOWN\r\n")
    run(loop)
    assert conn.codes() == [b"220"]
    assert conn.protocol.client_ip == BALANCER


def _refused_without_a_word(conn: Connection, ctx: WorkerContext, reason: str) -> None:
    assert conn.transport.writes == []
    assert conn.transport.closed
    assert ctx.stats.rejects == {reason: 1}


def test_a_header_from_outside_proxy_networks_is_refused(
    ctx: WorkerContext, loop: ClockLoop, caplog: pytest.LogCaptureFixture
) -> None:
    conn = Connection(ctx, "127.0.0.9", listener=edge(ctx))
    conn.send(HEADER)
    run(loop)
    _refused_without_a_word(conn, ctx, "proxy_untrusted")
    assert "PROXY header from [127.0.0.9]" in caplog.text
    run(loop)
    assert not ctx.connections


@pytest.mark.parametrize(
    "data",
    [b"EHLO client.test\r\n", b"PROXY TCP4 192.0.2.07 127.0.0.3 1 25\r\n", b"\x16\x03\x01"],
)
def test_a_malformed_header_is_refused(ctx: WorkerContext, loop: ClockLoop, data: bytes) -> None:
    conn = Connection(ctx, BALANCER, listener=edge(ctx))
    conn.send(data)
    run(loop)
    _refused_without_a_word(conn, ctx, "proxy_malformed")


def test_a_slow_header_is_refused_after_proxy_timeout(ctx: WorkerContext, loop: ClockLoop) -> None:
    conn = Connection(ctx, BALANCER, listener=edge(ctx))
    conn.send(HEADER[:10])
    run(loop)
    loop.advance(4.0)
    conn.send(HEADER[10:20])  # bytes do not push the deadline back
    loop.advance(0.5)
    assert not conn.transport.closed
    loop.advance(1.0)
    _refused_without_a_word(conn, ctx, "proxy_timeout")


def test_a_client_gone_during_the_header_leaves_nothing(
    ctx: WorkerContext, loop: ClockLoop
) -> None:
    conn = Connection(ctx, BALANCER, listener=edge(ctx))
    conn.send(HEADER[:5])
    run(loop)
    conn.lose()
    run(loop)
    assert not ctx.connections
    assert conn.transport.writes == []
    assert not loop.errors


def test_each_listener_gives_its_sessions_its_own_rules(
    loop: ClockLoop, tmp_path: Path, parser: ParserBackend
) -> None:
    sections = {
        "listeners": {
            "mx": {"listen": ["127.0.0.1:2525"]},
            "submission": {"listen": ["127.0.0.1:2587"], "role": "submission", "tls": "off"},
        }
    }
    ctx = make_context(loop, Spool(str(tmp_path / "spool")), parser, sections)
    try:
        mx, submission = (Connection(ctx, listener=state) for state in ctx.listeners)
        assert (mx.protocol.listener.name, submission.protocol.listener.name) == (
            "mx",
            "submission",
        )
        assert not mx.protocol.session.limits.require_auth
        assert submission.protocol.session.limits.require_auth
        assert submission.protocol.listener.listener.auth
        assert not submission.protocol.session.limits.auth  # not offered: no auth.passwords
        assert ctx.limits is ctx.listeners[0].limits  # ctx.limits: the first listener's
    finally:
        ctx.committer.stop()
