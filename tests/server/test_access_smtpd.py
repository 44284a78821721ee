"""The access policy inside smtpd, over a fake transport (fake_io.py): Postfix's log lines,
the reject metrics, HOLD and DISCARD, a DNSBL lookup awaited at RCPT, the early-talker
check before the greeting.  The tables are files, read as a worker reads them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from mta.config import Config, ConfigError
from mta.policy.dnsbl import Listing
from mta.protocol.session import ParserBackend
from mta.queue.msgfile import read_message_file
from mta.queue.spool import Spool
from mta.server.connect_access import PREGREET, access_connect_checks
from mta.server.context import WorkerContext
from tests.server.fake_io import ClockLoop, Connection, HeldCommitter

pytestmark = pytest.mark.timeout(30)

OUTSIDER = "192.0.2.7"
Start = Callable[..., WorkerContext]


@pytest.fixture
def start(tmp_path: Path, loop: ClockLoop, parser: ParserBackend) -> Iterator[Start]:
    """A worker context whose configuration has ``settings`` (nested dicts) and whose
    tables are files written from ``tables`` ({"client": text, ...; "recipients": ...})."""
    made: list[WorkerContext] = []
    spool = Spool(str(tmp_path / "spool"))

    def start(tables: dict[str, str] | None = None, **settings: Any) -> WorkerContext:
        access: dict[str, Any] = settings.pop("access", {})
        relay = {"domains": ["ours.test"], "recipients": "any", **settings.pop("relay", {})}
        for name, text in (tables or {}).items():
            path = tmp_path / f"{name}.table"
            path.write_text(text)
            if name == "recipients":
                relay["recipients"] = str(path)
            else:
                access[name] = str(path)
        config = msgspec.convert(
            {
                "hostname": "mx.test",
                "queue": {"path": spool.path},
                # no per-client limits: their checks would hold replies back a loop turn
                "limits": {"connections": 0, "auth_failures": 0},
                "relay": relay,
                "access": access,
                **settings,
            },
            Config,
        )
        spool.create()
        made.append(WorkerContext(config, spool, HeldCommitter(spool, loop), loop, parser))
        return made[-1]

    yield start
    for ctx in made:
        ctx.committer.stop()


def greeted(ctx: WorkerContext, peer: str = OUTSIDER) -> Connection:
    conn = Connection(ctx, peer)
    conn.send(b"EHLO client.example\r\n")
    conn.replies()
    return conn


def transaction(
    conn: Connection, *recipients: bytes, sender: bytes = b"s@client.example"
) -> list[bytes]:
    conn.send(b"MAIL FROM:<" + sender + b">\r\n")
    for rcpt in recipients:
        conn.send(b"RCPT TO:<" + rcpt + b">\r\n")
    return conn.replies()


def send_message(conn: Connection, loop: ClockLoop) -> bytes:
    conn.send(b"DATA\r\n")
    assert conn.codes() == [b"354"]
    conn.send(b"Subject: t\r\n\r\nhi\r\n.\r\n")
    loop.run_until(conn.has_output)
    (reply,) = conn.replies()
    return reply


def test_refusals_are_logged_as_postfix_does_and_counted(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    ctx = start({"recipients": "alice@ours.test\n", "sender": "spam.example REJECT\n"})
    conn = greeted(ctx)
    caplog.set_level(logging.INFO, "mta.smtpd")
    answers = transaction(conn, b"x@other.test", b"bob@ours.test", b"alice@ours.test")
    assert answers == [
        b"250 2.1.0 Ok\r\n",
        b"554 5.7.1 <x@other.test>: Relay access denied\r\n",
        b"550 5.1.1 <bob@ours.test>: Recipient address rejected: User unknown in relay "
        b"recipient table\r\n",
        b"250 2.1.5 Ok\r\n",
    ]
    conn.send(b"RSET\r\n")
    assert conn.codes() == [b"250"]
    assert transaction(conn, b"alice@ours.test", sender=b"s@spam.example")[1] == (
        b"554 5.7.1 <s@spam.example>: Sender address rejected: Access denied\r\n"
    )
    lines = [r.getMessage() for r in caplog.records if "NOQUEUE" in r.getMessage()]
    assert lines[0] == (
        f"NOQUEUE: reject: RCPT from unknown[{OUTSIDER}]: 554 5.7.1 <x@other.test>: Relay "
        "access denied; from=<s@client.example> to=<x@other.test> proto=ESMTP "
        "helo=<client.example>"
    )
    assert "User unknown in relay recipient table; from=<s@client.example>" in lines[1]
    assert "Sender address rejected" in lines[2]
    assert ctx.stats.rejects == {"relay_denied": 1, "unknown_recipient": 1, "access_sender": 1}


def test_client_and_helo_are_checked_at_rcpt(start: Start) -> None:
    """smtpd_delay_reject = yes: a listed client is greeted and answered at RCPT."""
    ctx = start({"client": "192.0.2.0/24 DEFER come back later\n"})
    conn = greeted(ctx)
    assert transaction(conn, b"alice@ours.test")[1] == (
        f"450 4.7.1 <unknown[{OUTSIDER}]>: Client host rejected: come back later\r\n".encode()
    )
    ctx = start({"helo": ".example REJECT\n"})
    conn = greeted(ctx)
    assert transaction(conn, b"alice@ours.test")[1] == (
        b"554 5.7.1 <client.example>: Helo command rejected: Access denied\r\n"
    )


def test_a_route_alone_does_not_make_a_domain_ours(start: Start) -> None:
    ctx = start(relay={"domains": []}, routes={"routed.test": "smtp:[127.0.0.1]:2525"})
    conn = greeted(ctx)
    assert transaction(conn, b"x@routed.test")[1].startswith(b"554 5.7.1 <x@routed.test>: Relay")


def test_hold_puts_the_message_in_a_file_of_its_own_marked_hold(
    start: Start, loop: ClockLoop, caplog: pytest.LogCaptureFixture
) -> None:
    ctx = start({"sender": "hold.example HOLD\n"})
    caplog.set_level(logging.INFO, "mta.smtpd")
    conn = greeted(ctx)
    assert transaction(conn, b"alice@ours.test", sender=b"s@hold.example")[1] == (
        b"250 2.1.5 Ok\r\n"
    )
    assert send_message(conn, loop).startswith(b"250 2.0.0 Ok: queued as ")
    (name,) = [p.name for p in Path(ctx.spool.dir("incoming")).iterdir()]
    assert read_message_file(ctx.spool.file("incoming", name)).envelope.hold
    assert (
        "NOQUEUE: hold: RCPT from unknown[192.0.2.7]: <s@hold.example>: Sender address "
        "triggers HOLD action; from=<s@hold.example>" in caplog.text
    )
    # the next transaction of the session is not held
    assert transaction(conn, b"alice@ours.test")[1] == b"250 2.1.5 Ok\r\n"
    send_message(conn, loop)
    assert len(list(Path(ctx.spool.dir("incoming")).iterdir())) == 1  # in a segment


def test_discard_answers_250_and_keeps_nothing(
    start: Start, loop: ClockLoop, caplog: pytest.LogCaptureFixture
) -> None:
    ctx = start({"recipient": "alice@ours.test DISCARD\n"})
    caplog.set_level(logging.INFO, "mta.smtpd")
    conn = greeted(ctx)
    assert transaction(conn, b"alice@ours.test", b"bob@ours.test")[1:] == [b"250 2.1.5 Ok\r\n"] * 2
    reply = send_message(conn, loop)
    assert reply.startswith(b"250 2.0.0 Ok: queued as ")
    queue_id = reply.split()[-1].decode()
    assert f"{queue_id}: discard: message from [{OUTSIDER}]" in caplog.text
    assert ctx.committer.committed == 0 and not list(Path(ctx.spool.dir("incoming")).iterdir())


def test_a_bad_table_is_a_config_error_naming_key_file_and_line(start: Start) -> None:
    with pytest.raises(ConfigError, match=r"^access\.client: .*client\.table, line 2: 'x/y'"):
        start({"client": "192.0.2.1 OK\nx/y REJECT\n"})
    with pytest.raises(ConfigError, match=r"^relay\.recipients: .*line 1: 'bob'"):
        start({"recipients": "bob\n"})


class SlowChecker:
    """A DNSBL checker whose answer the test gives."""

    def __init__(self) -> None:
        self.answer: asyncio.Future[Listing] | None = None
        self.asked: list[str] = []

    async def check(self, client_ip: str) -> Listing:
        self.asked.append(client_ip)
        self.answer = asyncio.get_running_loop().create_future()
        return await self.answer


def test_the_dnsbl_verdict_is_awaited_at_rcpt_not_before_the_greeting(
    start: Start, loop: ClockLoop
) -> None:
    ctx = start()
    checker = SlowChecker()
    ctx.connect_checks[:] = access_connect_checks(0, checker)  # type: ignore[arg-type]
    conn = Connection(ctx, OUTSIDER)
    loop.run_until(conn.has_output)
    assert conn.codes() == [b"220"]  # greeted while the lookup runs
    conn.send(
        b"EHLO client.example\r\nMAIL FROM:<s@client.example>\r\nRCPT TO:<alice@ours.test>\r\n"
    )
    loop.run_until(lambda: checker.answer is not None)
    assert conn.codes() == [b"250", b"250"]  # RCPT waits for the lookup
    checker.answer.set_result(Listing("zen.example.test"))  # type: ignore[union-attr]
    loop.run_until(conn.has_output)
    assert conn.replies() == [
        b"554 5.7.1 Service unavailable; Client host [192.0.2.7] blocked using zen.example.test\r\n"
    ]
    assert checker.asked == [OUTSIDER]
    trusted = Connection(ctx, "127.0.0.1")
    loop.run_until(trusted.has_output)
    assert checker.asked == [OUTSIDER]  # relay.networks are not looked up


@pytest.mark.parametrize("peer", [OUTSIDER, "::ffff:192.0.2.9"])
def test_an_early_talker_is_refused_after_the_pause(
    start: Start, loop: ClockLoop, caplog: pytest.LogCaptureFixture, peer: str
) -> None:
    ctx = start(access={"greet_pause": 2.0})
    caplog.set_level(logging.INFO, "mta.smtpd")
    conn = Connection(ctx, peer)
    loop.advance(0)  # the check starts its pause
    conn.send(b"EHLO impatient.example\r\n")
    loop.advance(1.0)
    assert conn.replies() == []
    loop.advance(1.5)
    assert conn.replies() == [PREGREET]
    assert conn.transport.closed
    assert f"NOQUEUE: reject: CONNECT from unknown[{peer}]: 554 5.5.1" in caplog.text
    assert ctx.stats.rejects == {"pregreet": 1}


def test_a_patient_client_is_greeted_after_the_pause_and_trusted_ones_at_once(
    start: Start, loop: ClockLoop
) -> None:
    ctx = start(access={"greet_pause": 2.0})
    conn = Connection(ctx, OUTSIDER)
    loop.advance(0)  # the check starts its pause
    loop.advance(1.0)
    assert conn.replies() == []
    loop.advance(1.5)
    assert conn.codes() == [b"220"]
    conn.send(b"EHLO patient.example\r\n")
    assert conn.codes() == [b"250"]
    trusted = Connection(ctx, "127.0.0.1")
    loop.run_until(trusted.has_output)
    assert trusted.codes() == [b"220"]


def test_input_before_the_greeting_is_bounded(start: Start, loop: ClockLoop) -> None:
    """A client that floods during the pause stops being read (the session's own limit on
    unread input), and is refused once the pause is over."""
    ctx = start(access={"greet_pause": 2.0})
    conn = Connection(ctx, OUTSIDER)
    loop.advance(0)
    for _ in range(40):
        conn.send(b"x" * 65536)
    assert not conn.transport.reading
    loop.advance(2.5)
    assert conn.replies() == [PREGREET]


def test_the_pause_is_for_mx_listeners_only(start: Start, loop: ClockLoop) -> None:
    """A client of an implicit-TLS listener speaks first (its ClientHello), rightly."""
    entry = {"listen": ["127.0.0.1:465"], "role": "submissions", "tls": "off"}
    ctx = start(access={"greet_pause": 2.0}, listeners={"submissions": entry})
    (submissions,) = ctx.listeners
    assert submissions.listener.role == "submissions"
    conn = Connection(ctx, OUTSIDER, listener=submissions)
    conn.send(b"\x16\x03\x01")
    loop.run_until(conn.has_output)
    assert conn.codes()[0] == b"220"  # not refused, and not kept waiting
