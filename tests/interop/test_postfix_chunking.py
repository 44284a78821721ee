"""CHUNKING (RFC 3030) with Debian's Postfix, both ways, over loopback.

1. Postfix as the next hop (it offers CHUNKING by default): ``mta serve`` relays to it with
   ``BDAT <n> LAST`` (seen on the wire through a tap, and in Postfix's verbose smtpd log),
   and the message Postfix passes on to a capture sink ends with exactly the octets we
   sent.
2. Postfix as a sender into the relay: Postfix relays (``relayhost``) to ``mta serve``,
   which offers it CHUNKING; the relay passes on exactly the octets Postfix sent, after its
   own Received header.  Postfix's SMTP client (3.7.11: the smtp binary has no BDAT in it)
   sends DATA whatever the server offers; the test reads the payload from BDAT instead if a
   later Postfix sends it.
(``delivery.chunking = false`` sending DATA is tests/delivery/test_chunking.py's.)
"""

from __future__ import annotations

import re
import smtplib
from collections.abc import Callable

import pytest

from tests.delivery.sink import CaptureSink
from tests.helpers import MtaProcess, wait_until
from tests.interop.postfix_instance import InteropPostfix, WireTap

pytestmark = pytest.mark.timeout(90)

MESSAGE = (
    b"From: a@b.test\r\nTo: c@d.test\r\nDate: Mon, 30 Nov 2026 00:00:00 +0000\r\n"
    b"Message-ID: <chunking@b.test>\r\nSubject: chunking interop\r\n\r\n"
    b".a line that DATA would stuff\r\n..and another\r\n8-bit \xc3\xa9t\xc3\xa9\r\nend\r\n"
)
BDAT_LAST = rb"BDAT (\d+) LAST\r\n"


def submit(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30) as c:
        assert c.sendmail("a@b.test", ["c@d.test"], MESSAGE) == {}


def chunk_after(tap: WireTap) -> bytes:
    """The octets of the BDAT LAST that went through ``tap``."""
    match = tap.wait_for(BDAT_LAST)
    size = int(match.group(1))
    tap.wait_for(re.escape(match.group(0)) + rb"[\s\S]{%d}" % size)
    return tap.sent[match.end() : match.end() + size]


def only_received_before(data: bytes, payload: bytes) -> bytes:
    """``data`` is one Received field followed by exactly ``payload``: that field."""
    assert data.endswith(payload), data[-300:]
    field = data[: len(data) - len(payload)]
    assert field.startswith(b"Received: ") and field.endswith(b"\r\n"), field
    assert all(line[:1] in (b" ", b"\t") for line in field.split(b"\r\n")[1:-1]), field
    return field


def test_the_relay_sends_to_postfix_with_bdat(
    mta_factory: Callable[..., MtaProcess],
    sink_factory: Callable[..., CaptureSink],
    postfix_factory: Callable[..., InteropPostfix],
    tap_factory: Callable[[int], WireTap],
) -> None:
    sink = sink_factory()
    postfix = postfix_factory(f"127.0.0.1:{sink.port}")
    tap = tap_factory(postfix.port)
    relay = mta_factory({"delivery": {"relayhost": f"127.0.0.1:{tap.port}", "min_backoff": 1}})
    submit(relay.port)
    payload = chunk_after(tap)
    assert b"250 CHUNKING" in tap.answered or b"250-CHUNKING" in tap.answered
    assert b"\r\nDATA\r\n" not in tap.sent
    only_received_before(payload, MESSAGE)  # our Received, then the message untouched
    postfix.wait_log(rf"smtpd\[\d+\]: < \S+\[127\.0\.0\.1\]: BDAT {len(payload)} LAST$")
    [got] = sink.wait_for(1, timeout=30)
    only_received_before(got.data, payload)  # Postfix's Received, then what we sent
    assert got.rcpt_tos == ["c@d.test"]


def test_postfix_relays_into_the_relay_which_offers_chunking(
    mta_factory: Callable[..., MtaProcess],
    sink_factory: Callable[..., CaptureSink],
    postfix_factory: Callable[..., InteropPostfix],
    tap_factory: Callable[[int], WireTap],
) -> None:
    sink = sink_factory()
    relay = mta_factory({"delivery": {"relayhost": f"127.0.0.1:{sink.port}", "min_backoff": 1}})
    tap = tap_factory(relay.port)
    postfix = postfix_factory(f"127.0.0.1:{tap.port}", verbose=False)
    submit(postfix.port)
    [got] = sink.wait_for(1, timeout=40)
    assert re.search(rb"\r\n250[ -]CHUNKING\r\n", tap.answered)  # we offered it
    sent = tap.sent
    if re.search(BDAT_LAST, sent):  # a Postfix whose client speaks BDAT
        payload = chunk_after(tap)
    else:  # Postfix 3.7's SMTP client: DATA whatever is offered
        start = sent.index(b"\r\nDATA\r\n") + len(b"\r\nDATA\r\n")
        end = sent.index(b"\r\n.\r\n", start) + 2
        payload = sent[start:end].replace(b"\r\n..", b"\r\n.")
    postfix_received = only_received_before(payload, MESSAGE)
    assert b"(Postfix)" in postfix_received
    only_received_before(got.data, payload)  # the relay passed it on byte for byte


def test_dsn_parameters_reach_postfix_which_honours_them(
    mta_factory: Callable[..., MtaProcess],
    sink_factory: Callable[..., CaptureSink],
    postfix_factory: Callable[..., InteropPostfix],
    tap_factory: Callable[[int], WireTap],
) -> None:
    """Postfix offers DSN: the relay passes RET, ENVID, NOTIFY and ORCPT on (seen on the wire
    and in Postfix's log) and makes no notice of its own; Postfix, relaying on to a sink
    without DSN, sends the ``relayed`` notice the sender asked for, with our ENVID and ORCPT:
    the parameters arrived intact (RFC 3461 §4, §6.2.6)."""
    sink = sink_factory()
    postfix = postfix_factory(f"127.0.0.1:{sink.port}")
    tap = tap_factory(postfix.port)
    relay = mta_factory({"delivery": {"relayhost": f"127.0.0.1:{tap.port}", "min_backoff": 1}})
    with smtplib.SMTP("127.0.0.1", relay.port, local_hostname="client.test", timeout=30) as c:
        c.ehlo()
        code, _ = c.mail("a@b.test", ["RET=HDRS", "ENVID=interop+2B42"])
        assert code == 250
        code, _ = c.rcpt("c@d.test", ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;orig@d.test"])
        assert code == 250
        assert c.data(MESSAGE)[0] == 250
    tap.wait_for(rb"MAIL FROM:<a@b\.test>[^\r]* RET=HDRS ENVID=interop\+2B42")
    tap.wait_for(rb"RCPT TO:<c@d\.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;orig@d\.test\r\n")
    postfix.wait_log(r"< \S+\[127\.0\.0\.1\]: RCPT TO:<c@d\.test> NOTIFY=SUCCESS,FAILURE ORCPT")
    got = sink.wait_for(2, timeout=40)
    [report] = [m for m in got if m.mail_from == ""]
    assert report.rcpt_tos == ["a@b.test"]
    text = report.data.decode("utf-8", "replace")
    assert "Reporting-MTA: dns; postfix.bench.test" in text  # Postfix's notice, not ours
    assert "Original-Envelope-Id: interop+42" in text
    assert "Original-Recipient: rfc822;orig@d.test" in text
    assert re.search(r"Action: relayed", text)
    # ours: none (the next hop took the parameters); the queue manager logs a notice it
    # makes before it removes the message
    wait_until(lambda: ": removed" in relay.log())
    assert "sender delivery status notification" not in relay.log()
