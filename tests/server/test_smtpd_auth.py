"""smtpd's AUTH decision over a fake transport: credentials checked off the loop, a failure
answered after ``auth.failure_delay`` of the loop's clock, relay and the Received header
for an authenticated client, the sender-login check at MAIL, the per-client failure limit.
The listener allows plaintext AUTH (tests only) so no TLS handshake is needed here."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from mta.config import Config
from mta.policy.auth import load_auth_tables
from mta.policy.passwords import hash_password
from mta.protocol.session import ParserBackend
from mta.queue.spool import Spool
from mta.server.context import WorkerContext
from tests.server.fake_io import ClockLoop, Connection, HeldCommitter

pytestmark = pytest.mark.timeout(30)

DELAY = 5.0  # auth.failure_delay, on the loop's clock (moved by the test)


def plain(user: str, password: str) -> bytes:
    return b"AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()) + b"\r\n"


def make_ctx(loop: ClockLoop, tmp_path: Path, parser: ParserBackend, **auth: Any) -> WorkerContext:
    passwords = tmp_path / "passwd"
    passwords.write_text(f"alice:{hash_password('pw', ln=4)}\n")
    passwords.chmod(0o600)
    logins = tmp_path / "logins"
    logins.write_text("alice: alice@example.org\n")
    spool = Spool(str(tmp_path / "spool"))
    spool.create()
    settings = {
        "hostname": "mx.test",
        "queue": {"path": spool.path},
        "relay": {"networks": []},  # nobody relays without AUTH
        "listeners": {
            "sub": {"listen": ["127.0.0.1:0"], "role": "submission", "tls": "off",
                    "auth_plaintext": True},
        },
        "auth": {"passwords": str(passwords), "sender_logins": str(logins),
                 "failure_delay": DELAY, **auth},
        # no connection limit: its check would hold each greeting back a turn of the loop
        "limits": {"auth_failures": 1, "connections": 0},
    }  # fmt: skip
    config = msgspec.convert(settings, Config)
    ctx = WorkerContext(config, spool, HeldCommitter(spool, loop), loop, parser)
    ctx.authenticator, ctx.sender_logins = load_auth_tables(config)
    return ctx


@pytest.fixture
def ctx(loop: ClockLoop, tmp_path: Path, parser: ParserBackend) -> Iterator[WorkerContext]:
    ctx = make_ctx(loop, tmp_path, parser)
    yield ctx
    ctx.committer.stop()
    assert ctx.authenticator is not None
    ctx.authenticator.close()


def greeted(ctx: WorkerContext, peer: str = "192.0.2.9") -> Connection:
    conn = Connection(ctx, peer)
    conn.send(b"EHLO client.test\r\n")
    replies = conn.replies()
    assert replies[-1].endswith(b"250 AUTH PLAIN LOGIN\r\n")
    return conn


def test_mail_needs_auth_then_an_authenticated_client_relays_anywhere(
    ctx: WorkerContext, loop: ClockLoop
) -> None:
    conn = greeted(ctx)
    conn.send(b"MAIL FROM:<alice@example.org>\r\n")
    assert conn.replies() == [b"530 5.7.0 Authentication required\r\n"]
    conn.send(plain("alice", "pw") + b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<x@far.test>\r\n")
    loop.run_until(conn.has_output)  # verified on the thread pool
    assert conn.replies() == [
        b"235 2.7.0 Authentication successful\r\n",
        b"250 2.1.0 Ok\r\n",
        b"250 2.1.5 Ok\r\n",  # relay to an outside domain: permit_sasl_authenticated
    ]
    conn.send(b"DATA\r\nSubject: hi\r\n\r\nbody\r\n.\r\n")
    loop.run_until(lambda: b"queued as" in b"".join(conn.transport.writes))
    found = Spool(ctx.spool.path).find(conn.replies()[-1].split()[-1].decode())
    assert found is not None
    data = found[1].read_message()
    assert b"with ESMTPA id" in data.split(b"\r\n\r\n")[0]
    assert b"Authenticated sender" not in data and b"pw" not in data.split(b"\r\n\r\n")[0]


def test_the_authenticated_header_when_configured(
    loop: ClockLoop, tmp_path: Path, parser: ParserBackend
) -> None:
    ctx = make_ctx(loop, tmp_path, parser, authenticated_header=True)
    try:
        conn = greeted(ctx)
        conn.send(plain("alice", "pw") + b"MAIL FROM:<>\r\nRCPT TO:<x@far.test>\r\nDATA\r\n")
        loop.run_until(lambda: b"354" in b"".join(conn.transport.writes))
        conn.send(b"\r\nbody\r\n.\r\n")
        loop.run_until(lambda: b"queued as" in b"".join(conn.transport.writes))
        found = Spool(ctx.spool.path).find(conn.replies()[-1].split()[-1].decode())
        assert found is not None
        assert b"(Authenticated sender: alice)" in found[1].read_message()
    finally:
        ctx.committer.stop()


def test_a_sender_the_login_does_not_own_gets_553(ctx: WorkerContext, loop: ClockLoop) -> None:
    conn = greeted(ctx)
    conn.send(plain("alice", "pw") + b"MAIL FROM:<boss@example.org>\r\n")
    loop.run_until(conn.has_output)
    assert conn.replies()[-1] == (
        b"553 5.7.1 <boss@example.org>: Sender address rejected: not owned by user alice\r\n"
    )


def test_a_failure_is_answered_after_the_delay_then_421_beyond_the_limit(
    ctx: WorkerContext, loop: ClockLoop
) -> None:
    conn = greeted(ctx)
    conn.send(plain("alice", "wrong") + b"NOOP\r\n")
    task = conn.protocol._auth_task
    assert task is not None
    loop.run_until(lambda: _sleeping(task))  # verified: now waiting
    assert conn.replies() == []  # not before the delay
    loop.advance(DELAY)
    loop.run_until(conn.has_output)
    assert conn.replies() == [b"535 5.7.8 Error: authentication failed\r\n", b"250 2.0.0 Ok\r\n"]
    conn.send(plain("nobody", "x"))  # the second failure is beyond limits.auth_failures = 1
    loop.run_until(lambda: _sleeping(conn.protocol._auth_task))
    loop.advance(DELAY)
    loop.run_until(conn.has_output)
    assert conn.replies() == [b"421 4.7.0 mx.test Error: too many authentication failures\r\n"]
    assert conn.transport.closed
    other = greeted(ctx, peer="192.0.2.10")  # another client has a count of its own
    other.send(plain("alice", "pw"))
    loop.run_until(other.has_output)
    assert other.replies() == [b"235 2.7.0 Authentication successful\r\n"]


def test_a_client_that_leaves_mid_auth_leaves_no_task(ctx: WorkerContext, loop: ClockLoop) -> None:
    conn = greeted(ctx)
    conn.send(plain("alice", "wrong"))
    task = conn.protocol._auth_task
    assert task is not None
    conn.lose()
    loop.run_until(task.done)
    assert task.cancelled()


def _sleeping(task: object) -> bool:
    """The AUTH task waits on its failure delay (verification is done)."""
    coro = getattr(task, "get_coro", lambda: None)()
    frame = getattr(coro, "cr_frame", None)
    awaited = getattr(coro, "cr_await", None)
    return frame is not None and awaited is not None and "sleep" in repr(awaited)
