"""Final delivery: local Maildir routes and LMTP routes (DESIGN.md §4), end to end.

A ``maildir:`` route writes the message into ``{domain}/{user}`` under a directory of the
test, where Python's :mod:`mailbox` must be able to read it; an ``lmtp:`` route talks to a
CaptureSink in LMTP mode, whose per-recipient replies after DATA (RFC 2033 §4.2) decide each
recipient's fate separately.
"""

from __future__ import annotations

import email
import email.policy
import mailbox
import os
import smtplib
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.delivery.sink import CaptureSink
from tests.helpers import REPO, MtaProcess, wait_until

pytestmark = pytest.mark.timeout(120)

Factory = Callable[..., MtaProcess]
SENDER = "alice@sender.test"
MESSAGE = (
    b"From: Alice <alice@sender.test>\r\n"
    b"To: Bob <bob@local.test>\r\n"
    b"Subject: local delivery\r\n"
    b"Message-ID: <local-1@sender.test>\r\n"
    b"\r\n"
    b"Hello Bob,\r\n"
    b".this line started with a dot\r\n"
    b"\r\n"
    b"Gr\xc3\xbc\xc3\x9fe\r\n"
)


@pytest.fixture
def home() -> Iterator[CaptureSink]:
    """The sender's mail server: bounces arrive here."""
    with CaptureSink() as server:
        yield server


def send(server: MtaProcess, recipients: list[str], data: bytes = MESSAGE) -> None:
    with smtplib.SMTP("127.0.0.1", server.port, local_hostname="client.test", timeout=30) as c:
        assert c.sendmail(SENDER, recipients, data, mail_options=["BODY=8BITMIME"]) == {}


def queue_cli(server: MtaProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "mta", "queue", *args, "--config", str(server.config_path)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=30)


def delivered(maildir: Path) -> list[Path]:
    new = maildir / "new"
    return sorted(new.iterdir()) if new.is_dir() else []


# -- Maildir -------------------------------------------------------------------------------


def maildir_relay(mta_factory: Factory, root: Path, home: CaptureSink) -> MtaProcess:
    return mta_factory(
        {
            "delivery": {"min_backoff": 1, "max_backoff": 1},
            "routes": {
                "local.test": f"maildir:{root}/{{domain}}/{{user}}",
                "sender.test": f"smtp:[127.0.0.1]:{home.port}",
            },
        }
    )


def test_maildir_delivery(mta_factory: Factory, tmp_path: Path, home: CaptureSink) -> None:
    root = tmp_path / "mail"
    relay = maildir_relay(mta_factory, root, home)
    send(relay, ["bob@local.test"])
    maildir = root / "local.test" / "bob"
    [path] = wait_until(lambda: delivered(maildir))
    wait_until(lambda: relay.queue_empty())
    assert list((maildir / "tmp").iterdir()) == []
    assert (maildir / "cur").is_dir()
    raw = path.read_bytes()
    head = b"Return-Path: <alice@sender.test>\r\nDelivered-To: bob@local.test\r\n"
    assert raw.startswith(head + b"Received: from client.test ([127.0.0.1])\r\n\tby mx.test ")
    assert raw.endswith(MESSAGE)
    received = raw[len(head) : -len(MESSAGE)]
    assert received.count(b"Received: ") == 1 and received.endswith(b"\r\n")

    box = mailbox.Maildir(str(maildir), factory=None, create=False)
    [(key, message)] = list(box.items())
    assert key == path.name
    assert message["Subject"] == "local delivery"
    assert message["Return-Path"] == "<alice@sender.test>"
    assert message["Delivered-To"] == "bob@local.test"
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed.get_content().replace("\r\n", "\n").startswith("Hello Bob,\n.this line")
    assert "status=sent" in relay.log() and "relay=local" in relay.log()
    assert home.messages == []


def test_each_recipient_gets_their_own_copy_and_names_are_folded_to_lower_case(
    mta_factory: Factory, tmp_path: Path, home: CaptureSink
) -> None:
    root = tmp_path / "mail"
    relay = maildir_relay(mta_factory, root, home)
    send(relay, ["Bob@Local.Test", "carol@local.test"])
    [bob] = wait_until(lambda: delivered(root / "local.test" / "bob"))
    [carol] = wait_until(lambda: delivered(root / "local.test" / "carol"))
    assert b"Delivered-To: Bob@Local.Test\r\n" in bob.read_bytes()
    assert b"Delivered-To: carol@local.test\r\n" in carol.read_bytes()
    assert bob.name != carol.name
    wait_until(lambda: relay.queue_empty())


def test_maildir_trouble_defers_until_it_is_fixed(
    mta_factory: Factory, tmp_path: Path, home: CaptureSink
) -> None:
    root = tmp_path / "mail"
    (root / "local.test").mkdir(parents=True)
    blocker = root / "local.test" / "bob"
    blocker.write_text("a file where the mailbox directory should be")
    relay = maildir_relay(mta_factory, root, home)
    send(relay, ["bob@local.test"])
    wait_until(lambda: relay.files("deferred"))
    wait_until(lambda: "dsn=4.3.0, status=deferred" in relay.log())
    blocker.unlink()  # the administrator repairs it; the retry delivers
    [path] = wait_until(lambda: delivered(blocker), timeout=20)
    assert path.read_bytes().endswith(MESSAGE)
    wait_until(lambda: relay.queue_empty())
    assert home.messages == []


# -- LMTP ----------------------------------------------------------------------------------


@pytest.fixture
def lmtp() -> Iterator[CaptureSink]:
    with CaptureSink(lmtp=True) as server:
        yield server


def lmtp_relay(mta_factory: Factory, lmtp: CaptureSink, home: CaptureSink) -> MtaProcess:
    return mta_factory(
        {
            "routes": {
                "lmtp.test": f"lmtp:127.0.0.1:{lmtp.port}",
                "sender.test": f"smtp:[127.0.0.1]:{home.port}",
            },
        }
    )


def test_lmtp_accepts_one_recipient_and_refuses_the_other(
    mta_factory: Factory, lmtp: CaptureSink, home: CaptureSink
) -> None:
    lmtp.lmtp_data_replies = {"full@lmtp.test": (552, "5.2.2 Mailbox full")}
    relay = lmtp_relay(mta_factory, lmtp, home)
    send(relay, ["bob@lmtp.test", "full@lmtp.test"])
    [got] = lmtp.wait_for(1)
    assert got.helo == "mx.test"  # LHLO
    assert got.rcpt_tos == ["bob@lmtp.test"]
    assert got.data.endswith(MESSAGE)
    [bounce] = home.wait_for(1)
    assert (bounce.mail_from, bounce.rcpt_tos) == ("", [SENDER])
    dsn = email.message_from_bytes(bounce.data, policy=email.policy.default)
    _, status, _ = dsn.get_payload()
    [_, block] = status.get_payload()
    assert block["Final-Recipient"] == "rfc822; full@lmtp.test"
    assert block["Status"] == "5.2.2"
    assert block["Diagnostic-Code"] == "smtp; 552 5.2.2 Mailbox full"
    wait_until(lambda: relay.queue_empty())
    log = relay.log()
    assert "to=<bob@lmtp.test>" in log and "status=sent" in log
    assert "to=<full@lmtp.test>" in log and "status=bounced" in log


def test_lmtp_temporary_refusal_retries_that_recipient_only(
    mta_factory: Factory, lmtp: CaptureSink, home: CaptureSink
) -> None:
    lmtp.lmtp_data_replies = {"busy@lmtp.test": (452, "4.2.2 Over quota for now")}
    relay = lmtp_relay(mta_factory, lmtp, home)  # default backoff: only a flush retries
    send(relay, ["bob@lmtp.test", "busy@lmtp.test"])
    [first] = lmtp.wait_for(1)
    assert first.rcpt_tos == ["bob@lmtp.test"]
    wait_until(lambda: relay.files("deferred"))
    lmtp.lmtp_data_replies = {}
    assert queue_cli(relay, "flush").returncode == 0
    second = lmtp.wait_for(2)[1]
    assert second.rcpt_tos == ["busy@lmtp.test"]  # bob is not delivered twice
    wait_until(lambda: relay.queue_empty())
    assert len(lmtp.messages) == 2 and home.messages == []
