"""The DSN extension (RFC 3461-3464) and delay warnings end to end: real ``mta serve``
processes, a CaptureSink as the next hop and another, ``home``, for the sender's domain where
the notifications arrive; they are read with the ``email`` package."""

from __future__ import annotations

import email
import email.policy
import smtplib
from collections.abc import Callable
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from tests.delivery.sink import Captured, CaptureSink
from tests.helpers import MtaProcess, wait_until
from tests.master import scrape

pytestmark = pytest.mark.timeout(120)

Factory = Callable[..., MtaProcess]
SENDER = "alice@sender.test"
MESSAGE = (
    b"From: Alice <alice@sender.test>\r\n"
    b"Subject: dsn test\r\n"
    b"Message-ID: <dsn-1@sender.test>\r\n"
    b"\r\n"
    b"The body line.\r\n"
)


@pytest.fixture
def home(sink_factory: Callable[..., CaptureSink]) -> CaptureSink:
    """The sender's own mail server: notifications end up here."""
    return sink_factory()


def relay(
    mta_factory: Factory,
    sink: CaptureSink,
    home: CaptureSink,
    routes: dict[str, str] | None = None,
    **delivery: Any,
) -> MtaProcess:
    return mta_factory(
        {
            "delivery": {"relayhost": f"127.0.0.1:{sink.port}", **delivery},
            "routes": {"sender.test": f"smtp:[127.0.0.1]:{home.port}", **(routes or {})},
        }
    )


def send(server: MtaProcess, mail_options: list[str], rcpts: dict[str, list[str]]) -> None:
    """One transaction; ``rcpts``: each recipient with its RCPT parameters."""
    with smtplib.SMTP("127.0.0.1", server.port, local_hostname="client.test", timeout=30) as c:
        c.ehlo()
        assert c.has_extn("dsn")
        assert c.mail(SENDER, mail_options)[0] == 250
        for address, options in rcpts.items():
            assert c.rcpt(address, options)[0] == 250
        assert c.data(MESSAGE)[0] == 250


def report(got: Captured) -> tuple[Message, Message, list[Message], Message]:
    """(the whole report, its per-message fields, per-recipient blocks, returned part)."""
    assert (got.mail_from, got.rcpt_tos) == ("", [SENDER])
    message = email.message_from_bytes(got.data, policy=email.policy.default)
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    _human, status, returned = message.get_payload()  # type: ignore[misc]
    assert status.get_content_type() == "message/delivery-status"
    per_message, *blocks = status.get_payload()
    return message, per_message, blocks, returned


def test_ret_hdrs_returns_headers_with_envid_and_orcpt(
    mta_factory: Factory, sink: CaptureSink, home: CaptureSink
) -> None:
    sink.rcpt_replies = {"gone@dest.test": (550, "5.1.1 no such user")}
    server = relay(mta_factory, sink, home)
    send(
        server,
        ["RET=HDRS", "ENVID=env+2B1"],
        {"gone@dest.test": ["NOTIFY=FAILURE", "ORCPT=rfc822;orig+2Bgone@dest.test"]},
    )
    [got] = home.wait_for(1)
    message, per_message, [block], returned = report(got)
    assert message["Subject"] == "Undelivered Mail Returned to Sender"
    assert per_message["Original-Envelope-Id"] == "env+1"
    assert block["Original-Recipient"] == "rfc822; orig+gone@dest.test"
    assert block["Final-Recipient"] == "rfc822; gone@dest.test"
    assert (block["Action"], block["Status"]) == ("failed", "5.1.1")
    assert returned.get_content_type() == "text/rfc822-headers"
    assert b"Subject: dsn test" in got.data and b"The body line." not in got.data


def test_ret_full_returns_the_message(
    mta_factory: Factory, sink: CaptureSink, home: CaptureSink
) -> None:
    sink.rcpt_replies = {"gone@dest.test": (550, "5.1.1 no such user")}
    server = relay(mta_factory, sink, home)
    send(server, ["RET=FULL"], {"gone@dest.test": []})
    [got] = home.wait_for(1)
    _, per_message, [block], returned = report(got)
    assert block["Action"] == "failed"
    assert per_message["Original-Envelope-Id"] is None
    assert returned.get_content_type() == "message/rfc822"
    [inner] = returned.get_payload()  # type: ignore[misc]
    assert inner["Subject"] == "dsn test"
    assert inner.get_content().splitlines() == ["The body line."]


def test_notify_never_gives_no_bounce(
    mta_factory: Factory, sink: CaptureSink, home: CaptureSink
) -> None:
    sink.rcpt_replies = {
        "quiet@dest.test": (550, "5.1.1 no such user"),
        "delay@dest.test": (550, "5.1.1 no such user"),
        "loud@dest.test": (550, "5.1.1 no such user"),
    }
    server = relay(mta_factory, sink, home)
    send(
        server,
        [],
        {
            "quiet@dest.test": ["NOTIFY=NEVER"],
            "delay@dest.test": ["NOTIFY=DELAY"],
            "loud@dest.test": ["NOTIFY=SUCCESS,FAILURE"],
        },
    )
    [got] = home.wait_for(1)
    _, _, blocks, _ = report(got)
    assert [b["Final-Recipient"] for b in blocks] == ["rfc822; loud@dest.test"]
    wait_until(server.queue_empty)
    assert len(home.messages) == 1
    assert "to=<quiet@dest.test>: undeliverable; no bounce (NOTIFY without FAILURE)" in (
        server.log()
    )


def test_notify_success_to_a_next_hop_without_dsn_is_relayed(
    mta_factory: Factory, sink: CaptureSink, home: CaptureSink
) -> None:
    server = relay(mta_factory, sink, home)
    send(server, ["ENVID=e1"], {"bob@dest.test": ["NOTIFY=SUCCESS"], "carol@dest.test": []})
    [got] = home.wait_for(1)
    message, per_message, [block], returned = report(got)
    assert message["Subject"] == "Successful Mail Delivery Report"
    assert per_message["Original-Envelope-Id"] == "e1"
    assert block["Final-Recipient"] == "rfc822; bob@dest.test"
    assert (block["Action"], block["Status"]) == ("relayed", "2.0.0")
    assert returned.get_content_type() == "text/rfc822-headers"
    [delivered] = sink.messages
    assert delivered.rcpt_tos == ["bob@dest.test", "carol@dest.test"]
    assert "RET" not in delivered.mail_params and "ENVID" not in delivered.mail_params


def test_parameters_are_passed_to_a_next_hop_offering_dsn(
    mta_factory: Factory, sink: CaptureSink, home: CaptureSink
) -> None:
    sink.extensions = ["DSN"]
    server = relay(mta_factory, sink, home)
    send(
        server,
        ["RET=HDRS", "ENVID=a+2Bb"],
        {
            "bob@dest.test": ["NOTIFY=SUCCESS,DELAY", "ORCPT=rfc822;x+2By@dest.test"],
            "carol@dest.test": [],
        },
    )
    [delivered] = sink.wait_for(1)
    assert delivered.mail_params["RET"] == "HDRS" and delivered.mail_params["ENVID"] == "a+2Bb"
    rcpts = [line for line in sink.lines if line.upper().startswith("RCPT")]
    assert rcpts == [
        "RCPT TO:<bob@dest.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;x+2By@dest.test",
        "RCPT TO:<carol@dest.test> ORCPT=rfc822;carol@dest.test",
    ]
    wait_until(server.queue_empty)  # a notice would have been queued before the removal
    assert home.messages == []


def test_notify_success_for_maildir_is_delivered(
    mta_factory: Factory, sink: CaptureSink, home: CaptureSink, tmp_path: Path
) -> None:
    root = tmp_path / "mail"
    server = relay(mta_factory, sink, home, {"local.test": f"maildir:{root}/{{user}}"})
    send(server, [], {"bob@local.test": ["NOTIFY=SUCCESS"]})
    [got] = home.wait_for(1)
    _, _, [block], _ = report(got)
    assert block["Final-Recipient"] == "rfc822; bob@local.test"
    assert (block["Action"], block["Status"]) == ("delivered", "2.0.0")
    assert list((root / "bob" / "new").iterdir())
    notices = "mta_delivery_dsn_notices_total"
    wait_until(lambda: scrape(server.metrics_port).value(notices, action="delivered") == 1)


def test_notify_success_for_lmtp_is_delivered(
    mta_factory: Factory,
    sink: CaptureSink,
    home: CaptureSink,
    sink_factory: Callable[..., CaptureSink],
) -> None:
    lmtp = sink_factory(lmtp=True)
    server = relay(mta_factory, sink, home, {"lmtp.test": f"lmtp:127.0.0.1:{lmtp.port}"})
    send(server, [], {"bob@lmtp.test": ["NOTIFY=SUCCESS,FAILURE"]})
    [got] = home.wait_for(1)
    _, _, [block], _ = report(got)
    assert (block["Final-Recipient"], block["Action"]) == ("rfc822; bob@lmtp.test", "delivered")
    assert [m.rcpt_tos for m in lmtp.messages] == [["bob@lmtp.test"]]


def test_delay_warning_is_sent_once_even_across_a_restart(
    mta_factory: Factory, sink: CaptureSink, home: CaptureSink
) -> None:
    sink.data_reply = (451, "4.3.0 Try again later")
    server = relay(mta_factory, sink, home, min_backoff=0.5, max_backoff=0.5, delay_warning_time=1)
    send(server, [], {"bob@dest.test": [], "carol@dest.test": ["NOTIFY=FAILURE"]})
    [got] = home.wait_for(1, timeout=20)
    message, _, [block], _ = report(got)
    assert message["Subject"] == "Delayed Mail (still being retried)"
    assert block["Final-Recipient"] == "rfc822; bob@dest.test"  # carol asked for no delays
    assert (block["Action"], block["Status"]) == ("delayed", "4.3.0")
    assert block["Diagnostic-Code"] == "smtp; 451 4.3.0 Try again later"
    assert block["Will-Retry-Until"]
    tries = sink.transactions
    wait_until(lambda: sink.transactions >= tries + 2, timeout=20)
    assert len(home.messages) == 1
    assert server.stop() == 0
    server.start()
    tries = sink.transactions
    wait_until(lambda: sink.transactions >= tries + 2, timeout=20)
    assert len(home.messages) == 1
