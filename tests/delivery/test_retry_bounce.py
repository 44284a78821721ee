"""Temporary failures, retries, bounces and expiry, end to end (DESIGN.md §3, §4).

The relay delivers to a CaptureSink through ``relayhost``; the sender's domain
(``sender.test``) is routed to a second sink, ``home``, where bounces arrive and are read
with the ``email`` package.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from email.message import Message
from typing import Any

import pytest

from tests.delivery.sink import Captured, CaptureSink
from tests.helpers import REPO, MtaProcess, wait_until

pytestmark = pytest.mark.timeout(120)

Factory = Callable[..., MtaProcess]
SENDER = "alice@sender.test"
MESSAGE = (
    b"From: Alice <alice@sender.test>\r\n"
    b"Subject: retry and bounce\r\n"
    b"Message-ID: <retry-1@sender.test>\r\n"
    b"\r\n"
    b"The body is not returned in a bounce.\r\n"
)


@pytest.fixture
def home(sink_factory: Callable[..., CaptureSink]) -> CaptureSink:
    """The sender's own mail server: bounces end up here."""
    return sink_factory()


def relay_config(sink: CaptureSink, home: CaptureSink, **delivery: Any) -> dict[str, Any]:
    return {
        "delivery": {"relayhost": f"127.0.0.1:{sink.port}", **delivery},
        "routes": {"sender.test": f"smtp:[127.0.0.1]:{home.port}"},
    }


def send(server: MtaProcess, recipients: list[str], sender: str = SENDER) -> None:
    with smtplib.SMTP("127.0.0.1", server.port, local_hostname="client.test", timeout=30) as c:
        assert c.sendmail(sender, recipients, MESSAGE) == {}


def queue_cli(server: MtaProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "mta", "queue", *args, "--config", str(server.config_path)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=30)


def parts(message: Message) -> list[Message]:
    """The parts of a multipart (or message/delivery-status) entity."""
    payload = message.get_payload()
    assert isinstance(payload, list), payload
    messages = [part for part in payload if isinstance(part, Message)]
    assert len(messages) == len(payload), payload
    return messages


def dsn_blocks(bounce: Captured) -> list[Message]:
    """Check the DSN's structure; return its per-recipient status blocks."""
    assert (bounce.mail_from, bounce.rcpt_tos) == ("", [SENDER])
    message = email.message_from_bytes(bounce.data, policy=email.policy.default)
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    human, status, original = parts(message)
    assert human.get_content_type() == "text/plain"
    assert status.get_content_type() == "message/delivery-status"
    assert original.get_content_type() == "text/rfc822-headers"
    headers = email.message_from_bytes(original.get_payload(decode=True))  # type: ignore[arg-type]
    assert headers["Subject"] == "retry and bounce"
    assert headers["Message-ID"] == "<retry-1@sender.test>"
    assert headers["Received"].startswith("from client.test")
    assert b"The body is not returned" not in bounce.data
    per_message, *blocks = parts(status)
    assert per_message["Reporting-MTA"] == "dns; mx.test"
    return blocks


def test_451_defers_and_is_delivered_once_after_flush(
    mta_factory: Factory, sink: CaptureSink, home: CaptureSink
) -> None:
    sink.data_reply = (451, "4.3.0 Try again later")
    relay = mta_factory(relay_config(sink, home))  # min_backoff: the default 300 s
    send(relay, ["bob@dest.test"])
    [deferred] = wait_until(lambda: relay.files("deferred"))
    wait_until(lambda: "status=deferred (451 4.3.0 Try again later)" in relay.log())
    [entry] = json.loads(queue_cli(relay, "list", "--json").stdout)
    assert (entry["id"], entry["state"]) == (deferred.name, "deferred")
    assert entry["last_error"] == "451 4.3.0 Try again later"
    assert entry["next_try"] == pytest.approx(deferred.stat().st_mtime)  # mtime = next try
    assert entry["next_try"] > time.time() + 200  # about min_backoff (300 s) away
    assert sink.messages == []

    sink.data_reply = None  # the next hop recovers; the operator flushes
    flushed = queue_cli(relay, "flush")
    assert flushed.returncode == 0, flushed.stderr
    [got] = sink.wait_for(1)
    assert got.data.endswith(MESSAGE) and got.rcpt_tos == ["bob@dest.test"]
    wait_until(lambda: relay.queue_empty())
    assert queue_cli(relay, "flush").returncode == 0  # nothing left to send twice
    wait_until(lambda: relay.log().count("status=sent") == 1)
    assert len(sink.messages) == 1 and sink.transactions == 2
    assert home.messages == []


def test_only_the_deferred_recipient_is_tried_again(
    mta_factory: Factory, sink: CaptureSink, home: CaptureSink
) -> None:
    sink.rcpt_replies = {"later@dest.test": (452, "4.2.2 Mailbox full")}
    relay = mta_factory(relay_config(sink, home, min_backoff=1, max_backoff=1))
    send(relay, ["bob@dest.test", "later@dest.test"])
    [first] = sink.wait_for(1)
    assert first.rcpt_tos == ["bob@dest.test"]
    wait_until(lambda: relay.files("deferred"))
    sink.rcpt_replies = {}  # the mailbox has room again; the backoff brings it back
    second = sink.wait_for(2, timeout=20)[1]
    assert second.rcpt_tos == ["later@dest.test"]
    wait_until(lambda: relay.queue_empty())
    assert len(sink.messages) == 2 and home.messages == []


def test_connection_refused_defers_and_retries_by_itself(
    mta_factory: Factory, sink: CaptureSink, home: CaptureSink
) -> None:
    sink.down()
    relay = mta_factory(relay_config(sink, home, min_backoff=1, max_backoff=1))
    send(relay, ["bob@dest.test"])
    wait_until(lambda: relay.files("deferred"))
    wait_until(lambda: "Connection refused" in relay.log())
    sink.up()
    [got] = sink.wait_for(1, timeout=20)
    assert got.data.endswith(MESSAGE)
    wait_until(lambda: relay.queue_empty())
    assert home.messages == []


def test_refused_recipient_is_bounced_and_the_other_delivered(
    mta_factory: Factory, sink: CaptureSink, home: CaptureSink
) -> None:
    sink.rcpt_replies = {"nobody@dest.test": (550, "5.1.1 <nobody@dest.test>: User unknown")}
    relay = mta_factory(relay_config(sink, home))
    send(relay, ["bob@dest.test", "nobody@dest.test"])
    [got] = sink.wait_for(1)
    assert got.rcpt_tos == ["bob@dest.test"] and got.data.endswith(MESSAGE)
    [bounce] = home.wait_for(1)
    [block] = dsn_blocks(bounce)
    assert block["Final-Recipient"] == "rfc822; nobody@dest.test"
    assert block["Action"] == "failed"
    assert block["Status"] == "5.1.1"
    assert block["Remote-MTA"] == "dns; 127.0.0.1"
    assert block["Diagnostic-Code"] == "smtp; 550 5.1.1 <nobody@dest.test>: User unknown"
    wait_until(lambda: relay.queue_empty())
    assert len(sink.messages) == 1 and len(home.messages) == 1


def test_bounce_to_an_internationalized_sender_uses_smtputf8(
    mta_factory: Factory, sink: CaptureSink, home: CaptureSink
) -> None:
    sink.rcpt_replies = {"nobody@dest.test": (550, "5.1.1 User unknown")}
    relay = mta_factory(relay_config(sink, home))
    data = "From: <jörg@sender.test>\r\nSubject: Grüße\r\n\r\nx\r\n".encode()
    with smtplib.SMTP("127.0.0.1", relay.port, local_hostname="client.test") as client:
        client.sendmail("jörg@sender.test", ["nobody@dest.test"], data, ["SMTPUTF8"])
    [bounce] = home.wait_for(1)
    assert (bounce.mail_from, bounce.rcpt_tos) == ("", ["jörg@sender.test"])
    assert "SMTPUTF8" in bounce.mail_params  # RFC 6531 §3.4: a UTF-8 address needs it
    assert "Grüße".encode() in bounce.data


def test_message_refused_after_data_bounces_every_recipient_in_one_dsn(
    mta_factory: Factory, sink: CaptureSink, home: CaptureSink
) -> None:
    sink.data_reply = (554, "5.6.0 Content rejected")
    relay = mta_factory(relay_config(sink, home))
    send(relay, ["bob@dest.test", "carol@dest.test"])
    [bounce] = home.wait_for(1)
    blocks = dsn_blocks(bounce)
    assert [b["Final-Recipient"] for b in blocks] == [
        "rfc822; bob@dest.test",
        "rfc822; carol@dest.test",
    ]
    assert {b["Status"] for b in blocks} == {"5.6.0"}
    wait_until(lambda: relay.queue_empty())
    assert sink.messages == []


def test_unreachable_past_max_lifetime_bounces(
    mta_factory: Factory, sink: CaptureSink, home: CaptureSink
) -> None:
    sink.down()  # for good
    relay = mta_factory(relay_config(sink, home, min_backoff=1, max_backoff=1, max_lifetime=2))
    send(relay, ["bob@dest.test"])
    [bounce] = home.wait_for(1, timeout=30)
    [block] = dsn_blocks(bounce)
    assert block["Final-Recipient"] == "rfc822; bob@dest.test"
    assert block["Action"] == "failed"
    assert block["Status"] == "4.4.7"
    assert "expired" in block["Diagnostic-Code"]
    assert "Connection refused" in block["Diagnostic-Code"]  # the last error is explained
    wait_until(lambda: relay.queue_empty())
    log = relay.log()
    assert log.count("status=deferred") >= 2  # it was tried more than once
    assert "to=<bob@dest.test>, relay=" in log and "status=expired" in log
    assert sink.messages == []


def test_bounce_of_a_null_sender_message_is_dropped(
    mta_factory: Factory, sink: CaptureSink, home: CaptureSink
) -> None:
    sink.rcpt_replies = {"nobody@dest.test": (550, "5.1.1 User unknown")}
    relay = mta_factory(relay_config(sink, home))
    send(relay, ["nobody@dest.test"], sender="")
    wait_until(lambda: "bounce dropped" in relay.log())
    wait_until(lambda: relay.queue_empty())
    log = relay.log()
    assert "to=<nobody@dest.test>" in log and "status=bounced" in log
    assert "sender non-delivery notification" not in log  # no new message was made
    assert log.count("(queued)") == 1
    assert home.messages == [] and sink.messages == []


def test_a_bounce_that_cannot_be_delivered_is_dropped(
    mta_factory: Factory, sink: CaptureSink, home: CaptureSink
) -> None:
    sink.rcpt_replies = {"nobody@dest.test": (550, "5.1.1 User unknown")}
    home.rcpt_replies = {SENDER: (550, "5.1.1 The sender does not exist either")}
    relay = mta_factory(relay_config(sink, home))
    send(relay, ["nobody@dest.test"])
    wait_until(lambda: "bounce dropped" in relay.log())
    wait_until(lambda: relay.queue_empty())
    log = relay.log()
    assert log.count("sender non-delivery notification") == 1  # one bounce, no bounce loop
    assert f"to=<{SENDER}>" in log
    assert home.messages == [] and sink.messages == []


def test_message_over_the_next_hops_size_limit_bounces(
    mta_factory: Factory, sink: CaptureSink, home: CaptureSink
) -> None:
    sink.max_size = 100  # advertised in EHLO SIZE (RFC 1870): not even tried
    relay = mta_factory(relay_config(sink, home))
    send(relay, ["bob@dest.test"])
    [bounce] = home.wait_for(1)
    [block] = dsn_blocks(bounce)
    assert block["Status"] == "5.3.4"
    assert "exceeds size limit 100" in block["Diagnostic-Code"]
    wait_until(lambda: relay.queue_empty())
    assert sink.messages == [] and sink.transactions == 0


class SilentServer:
    """Speaks SMTP up to the end of the message data, then never answers again; records
    when the client hangs up."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.message_in = threading.Event()
        self.hung_up_after: float | None = None  # seconds from the end of data to EOF
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn, conn.makefile("rb") as lines:
            conn.sendall(b"220 silent.test ESMTP\r\n")
            for reply in (b"250 silent.test", b"250 2.1.0 Ok", b"250 2.1.5 Ok", b"354 Go on"):
                lines.readline()  # EHLO, MAIL, RCPT, DATA: one at a time, no PIPELINING
                conn.sendall(reply + b"\r\n")
            while lines.readline() not in (b".\r\n", b""):
                pass
            self.message_in.set()
            start = time.monotonic()
            conn.settimeout(30)
            try:
                if conn.recv(1) == b"":
                    self.hung_up_after = time.monotonic() - start
            except OSError:
                self.hung_up_after = time.monotonic() - start

    def close(self) -> None:
        self.listener.close()
        self.thread.join(35)


def test_a_next_hop_that_stops_answering_is_given_up_and_hung_up_on(
    mta_factory: Factory, home: CaptureSink
) -> None:
    silent = SilentServer()
    try:
        relay = mta_factory(
            {
                "delivery": {"relayhost": f"127.0.0.1:{silent.port}", "command_timeout": 1},
                "routes": {"sender.test": f"smtp:[127.0.0.1]:{home.port}"},
            }
        )
        send(relay, ["bob@dest.test"])
        assert silent.message_in.wait(10)
        wait_until(lambda: relay.files("deferred"))
        wait_until(lambda: silent.hung_up_after is not None, timeout=10)
    finally:
        silent.close()
    assert silent.hung_up_after is not None and silent.hung_up_after < 5
    log = relay.log()
    assert "dsn=4.4.2, status=deferred (timeout waiting for a reply from" in log
    assert home.messages == []
