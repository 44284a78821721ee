"""REQUIRETLS (RFC 8689), SMTPUTF8 (RFC 6531) and 8BITMIME (RFC 6152) end to end.

A relay (``mta serve``, STARTTLS inbound with a trustme certificate) takes mail from smtplib
and delivers it through a relayhost named ``smart.test`` (an A record of the test DNS
server) to a CaptureSink told which extensions to offer; the sender's domain is routed to
a second sink, ``home.test``, where bounces arrive and are read with the ``email`` package.
Both sinks present certificates of the same test CA, which the relay trusts.
"""

from __future__ import annotations

import email
import email.policy
import re
import smtplib
import ssl
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.delivery.dnsserver import DnsServer
from tests.delivery.sink import Captured, CaptureSink
from tests.helpers import MtaProcess, wait_until

pytestmark = pytest.mark.timeout(60)

Factory = Callable[..., MtaProcess]
SENDER = "alice@sender.test"
TEXT = "Grüße aus Köln, ça va? ✓\r\n" * 4
MIME_HEAD = b"MIME-Version: 1.0\r\nSubject: 8bit\r\n"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        server.add_a("smart.test", "127.0.0.1")
        server.add_a("home.test", "127.0.0.1")
        yield server


def tls_sink(sink_factory: Callable[..., CaptureSink], ca: trustme.CA, name: str) -> CaptureSink:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(name).configure_cert(context)
    return sink_factory(ssl_context=context)


@pytest.fixture
def smart(sink_factory: Callable[..., CaptureSink], ca: trustme.CA) -> CaptureSink:
    return tls_sink(sink_factory, ca, "smart.test")


@pytest.fixture
def home(sink_factory: Callable[..., CaptureSink], ca: trustme.CA) -> CaptureSink:
    sink = tls_sink(sink_factory, ca, "home.test")
    sink.extensions = ["REQUIRETLS"]
    return sink


@pytest.fixture
def strict(sink_factory: Callable[..., CaptureSink], ca: trustme.CA) -> CaptureSink:
    """Reached for ``strict.test`` under ``verify``, with a certificate for another name."""
    return tls_sink(sink_factory, ca, "other.test")


@pytest.fixture
def relay(
    mta_factory: Factory,
    ca: trustme.CA,
    dns: DnsServer,
    smart: CaptureSink,
    home: CaptureSink,
    strict: CaptureSink,
    tmp_path: Path,
) -> MtaProcess:
    cert = ca.issue_cert("mx.test")
    cert_path, key_path, ca_path = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    ca.cert_pem.write_to_path(str(ca_path))
    config: dict[str, Any] = {
        "smtp": {"tls_cert": str(cert_path), "tls_key": str(key_path)},
        "delivery": {
            "relayhost": f"smart.test:{smart.port}",
            "dns_servers": [f"127.0.0.1:{dns.port}"],
            "tls_ca_file": str(ca_path),
        },
        "routes": {
            "sender.test": f"smtp:[home.test]:{home.port}",
            "strict.test": f"smtp:[home.test]:{strict.port}",
        },
        "tls_policy": {f"[home.test]:{strict.port}": "verify"},
    }
    return mta_factory(config)


def client(relay: MtaProcess, tls: bool = True) -> smtplib.SMTP:
    smtp = smtplib.SMTP("127.0.0.1", relay.port, local_hostname="client.test", timeout=30)
    smtp.ehlo()
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        smtp.starttls(context=context)
        smtp.ehlo()
    return smtp


def parse(data: bytes) -> EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)  # type: ignore[return-value]


def bounce_status(bounce: Captured) -> list[str]:
    """The Status fields of a DSN, checked for its structure."""
    assert (bounce.mail_from, bounce.rcpt_tos) == ("", [SENDER])
    message = parse(bounce.data)
    assert message.get_content_type() == "multipart/report"
    _, status, original = message.get_payload()  # type: ignore[misc]
    assert original.get_content_type() == "text/rfc822-headers"  # headers only: RET=HDRS
    blocks = status.get_payload()[1:]
    return [str(block["Status"]) for block in blocks]


def text_of(part: EmailMessage) -> str:
    return str(part.get_content()).replace("\r\n", "\n")


# ----- REQUIRETLS -----------------------------------------------------------------------


def test_requiretls_is_offered_and_taken_only_under_tls(relay: MtaProcess) -> None:
    with client(relay, tls=False) as plain:
        assert not plain.has_extn("requiretls")
        assert plain.mail(SENDER, ["REQUIRETLS"])[0] == 555
    with client(relay) as secure:
        assert secure.has_extn("requiretls")
        assert secure.mail(SENDER, ["REQUIRETLS"])[0] == 250


def test_requiretls_goes_to_a_verified_server_that_offers_it(
    relay: MtaProcess, smart: CaptureSink
) -> None:
    smart.extensions = ["REQUIRETLS"]
    # 8-bit, to a server that offers 8BITMIME: sent unchanged, with BODY=8BITMIME
    message = MIME_HEAD + b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + TEXT.encode()
    with client(relay) as c:
        c.sendmail(SENDER, ["bob@dest.test"], message, ["REQUIRETLS", "BODY=8BITMIME"])
    [got] = smart.wait_for(1)
    assert got.tls and "REQUIRETLS" in got.mail_params
    assert got.data.endswith(message) and got.mail_params.get("BODY") == "8BITMIME"
    log = wait_until(lambda: "status=sent" in relay.log() and relay.log())
    assert "Verified TLS connection established to smart.test" in log
    assert re.search(r"dsn=2\.0\.0, status=sent \(.*\), tls=TLSv1\.[23] verified", log)


def test_requiretls_to_a_server_without_it_bounces_with_5_7_30(
    relay: MtaProcess, smart: CaptureSink, home: CaptureSink
) -> None:
    with client(relay) as c:
        # RET=FULL asked, yet RFC 8689 §5 returns the headers only (bounce_status checks)
        message = b"Subject: secret\r\n\r\nthe secret body\r\n"
        c.sendmail(SENDER, ["bob@dest.test"], message, ["REQUIRETLS", "RET=FULL"])
    [bounce] = home.wait_for(1)
    assert bounce_status(bounce) == ["5.7.30"]
    assert b"the secret body" not in bounce.data
    assert b"REQUIRETLS support required" in bounce.data
    assert bounce.tls and "REQUIRETLS" in bounce.mail_params  # RFC 8689 §5: the DSN too
    assert smart.messages == [] and smart.transactions == 0
    wait_until(lambda: "dsn=5.7.30, status=bounced" in relay.log())
    with client(relay) as c:  # the same server gets mail that does not require TLS
        c.sendmail(SENDER, ["bob@dest.test"], b"Subject: plain\r\n\r\nx\r\n")
    [got] = smart.wait_for(1)
    assert "REQUIRETLS" not in got.mail_params


def test_tls_required_no_is_delivered_despite_a_verify_policy(
    relay: MtaProcess, strict: CaptureSink
) -> None:
    with client(relay) as c:
        c.sendmail(SENDER, ["bob@strict.test"], b"Subject: 1\r\n\r\nx\r\n")
        wait_until(lambda: "dsn=4.7.5, status=deferred" in relay.log())
        message = b"Subject: 2\r\nTLS-Required: No\r\n\r\nx\r\n"
        c.sendmail(SENDER, ["bob@strict.test"], message)
    [got] = strict.wait_for(1)
    assert got.data.endswith(message) and got.tls  # STARTTLS still used, not verified
    # REQUIRETLS wins over the header field (RFC 8689 §4.1): not sent, and never bounced
    # for this: the verify policy's failure is temporary
    with client(relay) as c:
        c.sendmail(SENDER, ["carol@strict.test"], message, ["REQUIRETLS"])
    wait_until(lambda: relay.log().count("dsn=4.7.5, status=deferred") == 2)
    assert len(strict.messages) == 1


# ----- SMTPUTF8 -------------------------------------------------------------------------


def test_smtputf8_message_to_a_server_without_it_bounces_with_5_6_7(
    relay: MtaProcess, smart: CaptureSink, home: CaptureSink
) -> None:
    smart.without_extensions = {"SMTPUTF8"}
    with client(relay) as c:
        c.sendmail(SENDER, ["jörg@dest.test"], b"Subject: x\r\n\r\nx\r\n", ["SMTPUTF8"])
        # asked for, not needed: ASCII addresses and header (Postfix's autodetection)
        c.sendmail(SENDER, ["bob@dest.test"], b"Subject: y\r\n\r\ny\r\n", ["SMTPUTF8"])
    [bounce] = home.wait_for(1)
    assert bounce_status(bounce) == ["5.6.7"]
    [got] = smart.wait_for(1)
    assert got.rcpt_tos == ["bob@dest.test"] and "SMTPUTF8" not in got.mail_params


# ----- 8BITMIME -------------------------------------------------------------------------


def test_8bit_text_to_a_server_without_8bitmime_arrives_as_quoted_printable(
    relay: MtaProcess, smart: CaptureSink
) -> None:
    smart.without_extensions = {"8BITMIME"}
    message = (
        MIME_HEAD
        + b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        + TEXT.encode()
    )
    with client(relay) as c:
        c.sendmail(SENDER, ["bob@dest.test"], message, ["BODY=8BITMIME"])
    [got] = smart.wait_for(1)
    assert got.data.isascii() and "BODY" not in got.mail_params
    received = parse(got.data)
    assert received["Content-Transfer-Encoding"] == "quoted-printable"
    assert text_of(received) == TEXT.replace("\r\n", "\n")


def test_multipart_with_an_8bit_part(relay: MtaProcess, smart: CaptureSink) -> None:
    smart.without_extensions = {"8BITMIME"}
    message = (
        MIME_HEAD
        + b'Content-Type: multipart/alternative; boundary="=b="\r\n\r\n'
        + b"--=b=\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nascii part\r\n"
        + b"--=b=\r\nContent-Type: text/html; charset=utf-8\r\n"
        + b"Content-Transfer-Encoding: 8bit\r\n\r\n<p>"
        + TEXT.encode()
        + b"</p>\r\n--=b=--\r\n"
    )
    with client(relay) as c:
        c.sendmail(SENDER, ["bob@dest.test"], message, ["BODY=8BITMIME"])
    [got] = smart.wait_for(1)
    assert got.data.isascii()
    assert b"--=b=\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nascii part\r\n" in got.data
    plain, html = parse(got.data).iter_parts()
    assert text_of(plain) == "ascii part"  # type: ignore[arg-type]
    assert text_of(html) == "<p>" + TEXT.replace("\r\n", "\n") + "</p>"  # type: ignore[arg-type]


def test_8bit_message_that_is_not_mime_is_sent_as_is_and_logged(
    relay: MtaProcess, smart: CaptureSink
) -> None:
    smart.without_extensions = {"8BITMIME"}
    message = b"Subject: not mime\r\n\r\n" + TEXT.encode()
    with client(relay) as c:
        c.sendmail(SENDER, ["bob@dest.test"], message, ["BODY=8BITMIME"])
    [got] = smart.wait_for(1)
    assert got.data.endswith(message)
    wait_until(lambda: "offers no 8BITMIME: 8-bit message not MIME, sent as is" in relay.log())
