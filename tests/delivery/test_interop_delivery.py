"""Delivery interop with real software: Postfix's smtp-source into the relay, Postfix's
smtp-sink as the relay's next hop (DESIGN.md §6).

smtp-sink is started by each test on a free port and stopped afterwards.  Its ``-c``
counter (``sess=N quit=N mesg=N`` on stdout) says how many messages it took; with ``-d``
it writes each transaction to a file, which shows what a Postfix-made SMTP server saw.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import smtplib
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import MtaProcess, free_port, wait_for_port, wait_until

pytestmark = pytest.mark.timeout(120)

Factory = Callable[..., MtaProcess]
STATES = ("tmp", "incoming", "active", "deferred", "hold", "corrupt", "state")


class SmtpSink:
    """``smtp-sink -u USER -c [-d DUMP] 127.0.0.1:PORT 1000`` as a child of the test."""

    def __init__(self, workdir: Path, dump: str | None = None) -> None:
        self.port = free_port()
        self.out = workdir / "smtp-sink.out"
        user = "nobody" if os.geteuid() == 0 else getpass.getuser()
        command = ["/usr/sbin/smtp-sink", "-u", user, "-c"]
        if dump is not None:
            command += ["-d", dump]
        command += [f"127.0.0.1:{self.port}", "1000"]
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        wait_for_port("127.0.0.1", self.port)

    def count(self) -> int:
        """Messages taken so far, from the last ``mesg=N`` of the ``-c`` counter."""
        found = re.findall(rb"mesg=(\d+)", self.out.read_bytes())
        return int(found[-1]) if found else 0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def smtp_sink(tmp_path: Path) -> Iterator[SmtpSink]:
    sink = SmtpSink(tmp_path)
    try:
        yield sink
    finally:
        sink.stop()


def queue_files(server: MtaProcess) -> list[str]:
    """Every message still queued, as state/queue_id (state "segment" for small ones)."""
    in_segments = [f"segment/{queue_id}" for queue_id in server.segment_messages()]
    return in_segments + [f"{state}/{p.name}" for state in STATES for p in server.files(state)]


def test_smtp_source_through_the_relay_to_smtp_sink(
    mta_factory: Factory, smtp_sink: SmtpSink
) -> None:
    relay = mta_factory({"delivery": {"relayhost": f"127.0.0.1:{smtp_sink.port}"}})
    messages, recipients = 300, 2
    source = subprocess.run(
        [
            "/usr/sbin/smtp-source",
            *("-s", "5", "-m", str(messages), "-r", str(recipients), "-l", "2000"),
            *("-f", "load@client.test", "-t", "sink@dest.test", "-M", "client.test"),
            f"127.0.0.1:{relay.port}",
        ],
        capture_output=True,
        timeout=60,
    )
    assert source.returncode == 0, source.stderr
    wait_until(lambda: smtp_sink.count() >= messages, timeout=60)
    wait_until(lambda: queue_files(relay) == [], timeout=30)
    assert smtp_sink.count() == messages  # one transaction per message, both recipients
    log = relay.log()
    assert log.count("status=sent") == messages * recipients
    assert "status=deferred" not in log and "status=bounced" not in log
    # the queue manager unlinks, then logs: the last lines may trail the empty queue a little
    wait_until(lambda: relay.log().count(": removed") >= messages, timeout=10)
    assert relay.log().count(": removed") == messages


def test_what_smtp_sink_receives_is_what_the_client_sent(
    mta_factory: Factory, tmp_path: Path
) -> None:
    dump_dir = Path(tempfile.mkdtemp(prefix="smtp-sink-dump-"))  # smtp-sink runs as nobody
    dump_dir.chmod(0o777)
    try:
        text = relay_one_message(mta_factory, tmp_path, dump_dir)
    finally:
        shutil.rmtree(dump_dir, ignore_errors=True)
    head, _, received = text.partition(b"Received: from mx.test ")
    assert b"X-Mail-Args: <alice@sender.test> BODY=8BITMIME\n" in head
    # smtp-sink offers DSN: the recipient goes with its original address, as Postfix sends
    # it (ORCPT, RFC 3461 §4.2)
    assert b"X-Rcpt-Args: <bob@dest.test> ORCPT=rfc822;bob@dest.test\n" in head
    assert b"X-Helo-Args: mx.test\n" in head
    # smtp-sink's own trace header (3 lines), then ours, then the message exactly
    ours = received.split(b"\n", 3)[3]
    assert ours.startswith(b"Received: from client.test ([127.0.0.1])\n\tby mx.test (mta)")
    assert ours.endswith(INTEROP_MESSAGE.replace(b"\r\n", b"\n") + b"\n")
    assert ours.count(b"Received: ") == 1


INTEROP_MESSAGE = (
    b"From: <alice@sender.test>\r\nSubject: interop\r\n\r\n"
    b".leading dot\r\n.\r\n..\r\n8-bit: \xc3\xa4\xc3\xb6\xc3\xbc\r\n" + b"y" * 900 + b"\r\nend\r\n"
)


def relay_one_message(mta_factory: Factory, tmp_path: Path, dump_dir: Path) -> bytes:
    """Send INTEROP_MESSAGE through a relay to ``smtp-sink -d``; return the dump."""
    sink = SmtpSink(tmp_path, dump=f"{dump_dir}/msg.")
    try:
        relay = mta_factory({"delivery": {"relayhost": f"127.0.0.1:{sink.port}"}})
        with smtplib.SMTP("127.0.0.1", relay.port, local_hostname="client.test") as client:
            refused = client.sendmail(
                "alice@sender.test", ["bob@dest.test"], INTEROP_MESSAGE, ["BODY=8BITMIME"]
            )
        assert refused == {}
        wait_until(lambda: sink.count() == 1)
        [dump] = wait_until(lambda: list(dump_dir.iterdir()))
        wait_until(lambda: queue_files(relay) == [])
        # the dump is complete once its closing empty line is there
        return wait_until(lambda: (t := dump.read_bytes()).endswith(b"\n\n") and t)
    finally:
        sink.stop()
