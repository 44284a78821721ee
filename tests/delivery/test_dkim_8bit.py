"""DKIM and 8-bit bodies: a message we sign is converted to 7-bit before it is signed
(RFC 6376 §5.3), so the signature still verifies at a next hop without 8BITMIME, where
converting after signing would break it; the body decodes to the same text."""

from __future__ import annotations

import email
import email.policy
import smtplib
from collections.abc import Callable
from pathlib import Path

import dkim
import pytest

from tests.delivery.sink import CaptureSink
from tests.delivery.test_dkim import dkim_config, dnsfunc_for, keygen
from tests.helpers import MtaProcess

pytestmark = pytest.mark.timeout(60)

TEXT = "Grüße aus Köln, ça va? ✓\r\n" * 3


def test_signed_8bit_message_verifies_at_a_hop_without_8bitmime(
    mta_factory: Callable[..., MtaProcess], sink: CaptureSink, tmp_path: Path
) -> None:
    keys = {"ed.test": keygen(tmp_path, "ed.test", "e1", "ed25519")}
    sink.without_extensions = {"8BITMIME"}
    relay = mta_factory(dkim_config(keys, delivery={"relayhost": f"127.0.0.1:{sink.port}"}))
    message = (
        b"From: Alice <alice@ed.test>\r\nTo: bob@dest.test\r\nSubject: 8bit\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n" + TEXT.encode()
    )
    with smtplib.SMTP("127.0.0.1", relay.port, local_hostname="client.test", timeout=30) as c:
        c.sendmail("alice@ed.test", ["bob@dest.test"], message, ["BODY=8BITMIME"])
    [got] = sink.wait_for(1)
    assert got.data.isascii()
    assert dkim.verify(got.data, dnsfunc=dnsfunc_for(keys))
    received = email.message_from_bytes(got.data, policy=email.policy.default)
    assert received["Content-Transfer-Encoding"] == "quoted-printable"
    content = received.get_content()  # type: ignore[attr-defined]
    assert content.replace("\r\n", "\n") == TEXT.replace("\r\n", "\n")
