"""Inbound STARTTLS against a real server process with real clients (smtplib, swaks)."""

from __future__ import annotations

import shutil
import smtplib
import socket
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from mta.queue.msgfile import read_message_file
from tests.helpers import MtaProcess, wait_until


@pytest.fixture
def tls_mta(tmp_path: Path, mta_factory: Callable[..., MtaProcess]) -> MtaProcess:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=mx.test", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return mta_factory(
        {
            "smtp": {"tls_cert": str(cert), "tls_key": str(key)},
            "delivery": {"relayhost": "127.0.0.1:9"},  # nothing listens: mail stays queued
        }
    )


def _insecure() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _queued(server: MtaProcess) -> list[Path]:
    return [*server.files("incoming"), *server.files("active"), *server.files("deferred")]


def test_smtplib_starttls_then_mail_is_queued_with_esmtps(tls_mta: MtaProcess) -> None:
    with smtplib.SMTP("127.0.0.1", tls_mta.port, timeout=10) as client:
        client.ehlo("client.test")
        assert client.has_extn("starttls")
        code, _ = client.starttls(context=_insecure())
        assert code == 220
        client.ehlo("client.test")
        assert not client.has_extn("starttls")  # not offered twice
        refused = client.sendmail(
            "a@client.test", ["b@example.test"], b"Subject: tls\r\n\r\nhi\r\n"
        )
        assert refused == {}
    files = wait_until(lambda: _queued(tls_mta))
    data = read_message_file(str(files[0])).read_message()
    assert b"with ESMTPS id" in data.split(b"\r\n\r\n")[0]
    assert data.endswith(b"Subject: tls\r\n\r\nhi\r\n")


def test_swaks_tls(tls_mta: MtaProcess) -> None:
    swaks = shutil.which("swaks")
    assert swaks, "swaks is installed by .ci/setup"
    result = subprocess.run(
        [swaks, "--server", f"127.0.0.1:{tls_mta.port}", "--from", "a@client.test",
         "--to", "b@example.test", "-tls", "--body", "over tls"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Ready to start TLS" in result.stdout
    assert wait_until(lambda: _queued(tls_mta))


def test_plaintext_pipelined_after_starttls_is_not_executed(tls_mta: MtaProcess) -> None:
    with socket.create_connection(("127.0.0.1", tls_mta.port), timeout=10) as raw:
        raw.recv(1024)
        raw.sendall(b"EHLO c\r\n")
        raw.recv(4096)
        # the classic injection: commands smuggled behind STARTTLS in the same packet
        raw.sendall(b"STARTTLS\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<v@y.test>\r\n")
        reply = b""
        while not reply.endswith(b"\r\n"):
            reply += raw.recv(4096)
        assert reply.startswith(b"220 ")  # only the STARTTLS answer, nothing for MAIL/RCPT
        tls = _insecure().wrap_socket(raw, server_hostname="mx.test")
        tls.sendall(b"RCPT TO:<v@y.test>\r\n")
        answer = tls.recv(4096)
        assert answer.startswith(b"503 5.5.1"), answer  # no MAIL was ever accepted
        tls.close()
