"""Several listeners served by the same smtpd workers, each with its own TLS mode and
certificate: implicit TLS (RFC 8314) with smtplib.SMTP_SSL, a minimum TLS version,
certificates reloaded on HUP, and certificates that cannot be loaded stopping the start."""

from __future__ import annotations

import hashlib
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mta.exitcodes import EXIT_CONFIG
from mta.protocol.proxy import V2_SIGNATURE
from tests.delivery.sink import CaptureSink
from tests.edge.conftest import Certs
from tests.helpers import REPO, MtaProcess, free_port, to_toml, wait_until
from tests.master import scrape

pytestmark = pytest.mark.timeout(90)

MESSAGE = b"Subject: implicit\r\n\r\nhello\r\n"


def implicit(port: int, certs: Certs, **keys: Any) -> dict[str, Any]:
    """An implicit-TLS listener (relay control decides, as on an MX: no AUTH here)."""
    return {
        "listen": [f"127.0.0.1:{port}"],
        "tls": "implicit",
        "tls_cert": str(certs.cert),
        "tls_key": str(certs.key),
        "auth": False,
        "require_auth": False,
        **keys,
    }


def peer_fingerprint(port: int, certs: Certs) -> str:
    """The SHA-256 of the certificate the listener on ``port`` presents (implicit TLS)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        certs.client().wrap_socket(raw, server_hostname="mx.test") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert tls.recv(1024).startswith(b"220 ")
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def test_implicit_tls_with_smtp_ssl_then_mail_is_relayed_with_esmtps(
    mta_factory: Callable[..., MtaProcess], sink: CaptureSink, certs: Certs
) -> None:
    port = free_port()
    mta_factory(
        {
            "listeners": {"smtps": implicit(port, certs)},
            "delivery": {"relayhost": f"127.0.0.1:{sink.port}"},
        }
    )
    with smtplib.SMTP_SSL(
        "127.0.0.1", port, timeout=10, local_hostname="client.test", context=certs.client()
    ) as client:
        client.ehlo("client.test")
        assert not client.has_extn("starttls")  # TLS from the first octet: nothing to start
        assert client.docmd("STARTTLS")[0] == 502
        assert client.sendmail("a@client.test", ["b@example.test"], MESSAGE) == {}
    (message,) = sink.wait_for(1, timeout=30)
    assert b" with ESMTPS id " in message.data.split(b"\r\n\r\n")[0]


def _tls_greeting(raw: socket.socket, first: bytes, certs: Certs) -> bytes:
    """Handshake over ``raw`` with ``first`` sent in the same packet as the ClientHello;
    the server's greeting once it comes."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = certs.client().wrap_bio(incoming, outgoing, server_hostname="mx.test")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    raw.sendall(first + outgoing.read())  # the header and the ClientHello: one write
    greeting = b""
    while not greeting.endswith(b"\r\n"):
        try:
            if tls.version() is None:
                tls.do_handshake()
            greeting += tls.read(1024)
        except ssl.SSLWantReadError:
            raw.sendall(outgoing.read())
            data = raw.recv(65536)
            assert data, "closed by the server"
            incoming.write(data)
    raw.sendall(outgoing.read())
    return greeting


@pytest.mark.parametrize(
    "header",
    [
        b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 465\r\n",
        V2_SIGNATURE + b"\x21\x11\x00\x0c" + bytes([192, 0, 2, 7, 127, 0, 0, 1]) + bytes(4),
    ],
)
def test_a_proxy_header_and_the_client_hello_in_one_packet(
    mta_factory: Callable[..., MtaProcess], certs: Certs, header: bytes
) -> None:
    port = free_port()
    server = mta_factory(
        {
            "smtp": {"proxy_networks": ["127.0.0.1/32"]},
            "listeners": {"smtps": implicit(port, certs, proxy_protocol=True)},
        }
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        assert _tls_greeting(raw, header, certs).startswith(b"220 mx.test ")
    log = server.log()
    assert "connect from unknown[192.0.2.7] via [127.0.0.1] on smtps" in log
    assert "Anonymous TLS connection established from unknown[192.0.2.7]: TLSv1." in log


def test_tls_min_version_13_refuses_a_tls12_client_and_logs_it(
    mta_factory: Callable[..., MtaProcess], certs: Certs
) -> None:
    port = free_port()
    server = mta_factory({"listeners": {"smtps": implicit(port, certs, tls_min_version="1.3")}})
    with pytest.raises((ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError)):
        smtplib.SMTP_SSL(
            "127.0.0.1", port, timeout=10, context=certs.client(ssl.TLSVersion.TLSv1_2)
        )
    with smtplib.SMTP_SSL("127.0.0.1", port, timeout=10, context=certs.client()) as client:
        assert client.sock.version() == "TLSv1.3"  # type: ignore[union-attr]
        assert client.noop()[0] == 250
    assert "SSL_accept error from [127.0.0.1] on smtps" in server.log()


def test_a_failed_implicit_handshake_is_closed_without_a_greeting(
    mta_factory: Callable[..., MtaProcess], certs: Certs
) -> None:
    port = free_port()
    server = mta_factory({"listeners": {"smtps": implicit(port, certs)}})
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(b"EHLO plaintext.test\r\n")  # SMTP where TLS is due
        assert raw.recv(1024) == b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(b"\x16\x03\x01\x02\x00\x01")  # half a ClientHello, then gone
    assert server.log().count("SSL_accept error from [127.0.0.1] on smtps") == 2

    # neither session is left behind in the worker's count of open connections (the third
    # connection is the test's check that the relay answers on its [smtp] listener)
    def counted() -> bool:
        metrics = scrape(server.metrics_port)
        opened = metrics.value("mta_smtpd_connections_opened_total")
        return opened == 3 and metrics.value("mta_smtpd_connections_current") == 0

    wait_until(counted)


@pytest.mark.parametrize("reuse_port", [False, True])  # inherited sockets, or each its own
def test_listeners_served_by_two_workers_each_with_its_own_tls_mode(
    mta_factory: Callable[..., MtaProcess], certs: Certs, reuse_port: bool
) -> None:
    starttls, smtps = free_port(), free_port()
    cert = {"tls_cert": str(certs.cert), "tls_key": str(certs.key)}
    server = mta_factory(
        {
            "smtp": {"workers": 2, "reuse_port": reuse_port},
            "listeners": {
                "starttls": {"listen": [f"127.0.0.1:{starttls}"], **cert},
                "smtps": implicit(smtps, certs),
            },
        }
    )
    ready = re.compile(
        rf"smtpd ready on 127\.0\.0\.1:{server.port} \(smtp\), "
        rf"127\.0\.0\.1:{starttls} \(starttls\), 127\.0\.0\.1:{smtps} \(smtps\)"
    )
    wait_until(lambda: len(ready.findall(server.log())) == 2, timeout=30)
    for _ in range(4):  # a few of each, whichever worker takes them
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as plain:
            plain.ehlo("client.test")
            assert not plain.has_extn("starttls")  # no certificate on the [smtp] listener
        with smtplib.SMTP("127.0.0.1", starttls, timeout=10) as offered:
            offered.ehlo("client.test")
            assert offered.has_extn("starttls")
            assert offered.starttls(context=certs.client())[0] == 220
            assert offered.noop()[0] == 250
        with smtplib.SMTP_SSL("127.0.0.1", smtps, timeout=10, context=certs.client()) as tls:
            assert tls.noop()[0] == 250


def test_certificates_are_reloaded_on_hup(
    mta_factory: Callable[..., MtaProcess], certs: Certs
) -> None:
    port = free_port()
    server = mta_factory({"smtp": {"workers": 2}, "listeners": {"smtps": implicit(port, certs)}})
    before = peer_fingerprint(port, certs)
    old_workers = re.findall(r"started (smtpd#\d\[\d+\])", server.log())
    assert len(old_workers) == 2
    certs.issue()  # a new certificate in the same files
    server.signal(signal.SIGHUP)
    # the master replaces the workers one by one; once the old ones are gone, every new
    # connection gets the new certificate
    wait_until(lambda: all(f"{name} stopped" in server.log() for name in old_workers), timeout=60)
    after = {peer_fingerprint(port, certs) for _ in range(6)}
    assert len(after) == 1 and before not in after
    # a certificate that cannot be loaded: the reload is refused, the workers keep theirs
    certs.cert.write_text("not a certificate\n")
    server.signal(signal.SIGHUP)
    refused = "reload failed, keeping the running configuration: listeners.smtps.tls_cert: "
    wait_until(lambda: refused + f"cannot load {certs.cert}" in server.log())
    assert {peer_fingerprint(port, certs) for _ in range(3)} == after


def _write(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "mta.toml"
    path.write_text(to_toml(config))
    return path


def _mta(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mta", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_certificate_that_cannot_be_loaded_is_a_configuration_error(
    tmp_path: Path, certs: Certs
) -> None:
    missing = tmp_path / "missing.pem"
    config = {
        "hostname": "mx.test",
        "queue": {"path": str(tmp_path / "spool")},
        "metrics": {"listen": f"127.0.0.1:{free_port()}"},
        "master": {"user": "root", "allow_root": True},
        "listeners": {
            "smtps": {
                "listen": [f"127.0.0.1:{free_port()}"],
                "tls": "implicit",
                "tls_cert": str(missing),
                "tls_key": str(certs.key),
            }
        },
    }
    path = _write(tmp_path, config)
    checked = _mta("--config", str(path), "check-config")
    assert checked.returncode == 1
    assert f"listeners.smtps.tls_cert: cannot load {missing}" in checked.stderr
    served = _mta("--config", str(path), "serve")  # stops before binding anything
    assert served.returncode == EXIT_CONFIG
    assert f"listeners.smtps.tls_cert: cannot load {missing}" in served.stdout + served.stderr
    certs.cert.write_text("not a certificate\n")  # inherited from [smtp]: named so
    config["listeners"] = {"mx": {"listen": [f"127.0.0.1:{free_port()}"]}}
    config["smtp"] = {"tls_cert": str(certs.cert), "tls_key": str(certs.key)}
    checked = _mta("--config", str(_write(tmp_path, config)), "check-config")
    assert checked.returncode == 1
    assert f"smtp.tls_cert: cannot load {certs.cert}" in checked.stderr
