"""Interoperability with real SMTP clients: swaks and Postfix's smtp-source.

Both run as the programs people use, against ``mta serve`` on loopback; afterwards every
message they were told was queued must be in the spool, complete, with its envelope.
Deliveries go to a relay that refuses connections, so accepted mail stays queued
(``incoming/`` → ``active/`` → ``deferred/``) for the test to read.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from tests.helpers import MtaProcess
from tests.server.queue_view import queued, running_relay, stored

pytestmark = pytest.mark.timeout(120)

SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
_QUEUED = re.compile(rb"<-  250 2\.0\.0 Ok: queued as ([0-9A-F]{19})\r?\n")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, dead_relay: str) -> Iterator[MtaProcess]:
    """Two smtpd workers, as in production."""
    yield from running_relay(tmp_path_factory, dead_relay, {"smtp": {"workers": 2}})


def swaks(server: MtaProcess, *args: str | bytes) -> str:
    """Run swaks; assert it succeeded; the queue ID it was given."""
    command = [
        "swaks",
        "--server",
        f"127.0.0.1:{server.port}",
        "--helo",
        "client.test",
        "--timeout",
        "20",
        *args,
    ]
    result = subprocess.run(command, capture_output=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout.decode(errors="replace") + repr(result.stderr)
    ids = _QUEUED.findall(result.stdout)
    assert len(ids) == 1, result.stdout.decode(errors="replace")
    return ids[0].decode()


def body_of(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[1]


def test_swaks_plain(server: MtaProcess) -> None:
    queue_id = swaks(
        server, "--from", "a@b.test", "--to", "c@d.test", "--body", "Hello from swaks."
    )
    envelope, data = stored(server, queue_id)
    assert envelope.sender == "a@b.test"
    assert [r.address for r in envelope.recipients] == ["c@d.test"]
    assert envelope.client_helo == "client.test"
    assert envelope.client_address == "127.0.0.1"
    assert data.startswith(b"Received: from client.test ([127.0.0.1])\r\n")
    assert b"\r\nTo: c@d.test\r\nFrom: a@b.test\r\n" in data
    assert body_of(data).startswith(b"Hello from swaks.\r\n")


def test_swaks_pipelining_with_two_recipients(server: MtaProcess) -> None:
    queue_id = swaks(
        server,
        "--pipeline",
        "--from",
        "<>",
        "--to",
        "c@d.test,e@f.test",
        "--body",
        "pipelined",
    )
    envelope, data = stored(server, queue_id)
    assert envelope.sender == ""
    assert [r.address for r in envelope.recipients] == ["c@d.test", "e@f.test"]
    assert body_of(data).startswith(b"pipelined\r\n")


def test_swaks_8bit_body(server: MtaProcess) -> None:
    text = "Grüße aus Köln — ça marche, 日本語 ✓"
    queue_id = swaks(
        server,
        "--from",
        "a@b.test",
        "--to",
        "c@d.test",
        "--add-header",
        "Content-Type: text/plain; charset=utf-8",
        "--body",
        text.encode(),
    )
    _, data = stored(server, queue_id)
    assert body_of(data).startswith(text.encode() + b"\r\n")


MESSAGES = 2000


@pytest.mark.timeout(150)
def test_smtp_source_2000_messages_in_20_sessions(server: MtaProcess) -> None:
    before = queued(server)
    command = [
        SMTP_SOURCE,
        *("-s", "20", "-m", str(MESSAGES), "-l", "1024"),
        *("-f", "a@b.test", "-t", "c@d.test"),
        f"127.0.0.1:{server.port}",
    ]
    result = subprocess.run(command, capture_output=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    new = queued(server) - before
    assert len(new) == MESSAGES
    bodies = set()
    for queue_id in new:
        envelope, data = stored(server, queue_id)
        assert envelope.queue_id == queue_id
        assert envelope.sender == "a@b.test"
        assert [r.address for r in envelope.recipients] == ["c@d.test"]
        assert envelope.client_address == "127.0.0.1"
        assert envelope.size == len(data)
        assert data.startswith(b"Received: from ")
        assert b"\r\nFrom: <a@b.test>\r\nTo: <c@d.test>\r\n" in data
        bodies.add(body_of(data))
    assert len(bodies) == 1  # every copy of the payload arrived whole
    assert len(bodies.pop()) >= 1024
    assert server.files("corrupt") == []
