"""Access tables, recipient validation, HOLD / DISCARD, DNSBL and the early-talker check
on a real ``mta serve`` over loopback; HUP re-reads the tables; a bad table stops the start.

Clients connect from 127.0.0.2 and up, outside ``relay.networks`` (127.0.0.1/32).
"""

from __future__ import annotations

import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.delivery.dnsserver import DnsServer
from tests.delivery.sink import CaptureSink
from tests.helpers import REPO, MtaProcess, wait_until

pytestmark = pytest.mark.timeout(90)

OUTSIDER = "127.0.0.2"
LISTED = "127.0.0.3"  # on the DNS blocklist
REFUSED_CLIENT = "127.0.0.4"  # in the client access table

SENDERS = """\
# sender access table
hold.example      HOLD
discard.example   DISCARD
spam.example      REJECT no spam please
"""


@pytest.fixture(scope="module")
def sink() -> Iterator[CaptureSink]:
    with CaptureSink() as server:
        yield server


@pytest.fixture(scope="module")
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        server.add_a("3.0.0.127.bl.test", "127.0.0.2")
        yield server


@pytest.fixture(scope="module")
def edge(
    tmp_path_factory: pytest.TempPathFactory, sink: CaptureSink, dns: DnsServer
) -> Iterator[MtaProcess]:
    workdir = tmp_path_factory.mktemp("edge")
    tables = {
        "recipients": "alice@accepted.test\ncarol@accepted.test\n",
        "sender": SENDERS,
        "client": f"{REFUSED_CLIENT} REJECT\n",
    }
    for name, text in tables.items():
        (workdir / name).write_text(text)
    config = {
        "relay": {
            "networks": ["127.0.0.1/32"],
            "domains": ["accepted.test"],
            "recipients": str(workdir / "recipients"),
        },
        "access": {
            "sender": str(workdir / "sender"),
            "client": str(workdir / "client"),
            "greet_pause": 0.3,
        },
        "dnsbl": {"zones": ["bl.test"], "dns_servers": [f"127.0.0.1:{dns.port}"]},
        "routes": {"accepted.test": f"smtp:[127.0.0.1]:{sink.port}"},
    }
    proc = MtaProcess(workdir, config).start()
    try:
        yield proc
    finally:
        try:
            proc.stop(timeout=30)
        except Exception:  # noqa: BLE001  -- teardown must kill whatever is left
            proc.kill_tree()


def client(relay: MtaProcess, source: str = OUTSIDER) -> smtplib.SMTP:
    c = smtplib.SMTP("127.0.0.1", relay.port, source_address=(source, 0), timeout=10)
    c.ehlo("client.example")
    return c


def logged(relay: MtaProcess, text: str) -> None:
    """Wait until the relay's log has ``text`` (processes write their lines a moment late)."""
    wait_until(lambda: text in relay.log(), timeout=15)


def mta_cli(relay: MtaProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "mta", "--config", str(relay.config_path), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )


def test_unknown_recipients_are_refused_at_rcpt(edge: MtaProcess, sink: CaptureSink) -> None:
    with client(edge) as c:
        assert c.mail("s@client.example")[0] == 250
        assert c.rcpt("alice@accepted.test")[0] == 250
        code, text = c.rcpt("bob@accepted.test")
        assert (code, text) == (
            550,
            b"5.1.1 <bob@accepted.test>: Recipient address rejected: User unknown in relay "
            b"recipient table",
        )
        assert c.data(b"Subject: valid\r\n\r\nhi\r\n")[0] == 250
    message = wait_until(lambda: [m for m in sink.messages if b"Subject: valid" in m.data])[0]
    assert message.rcpt_tos == ["alice@accepted.test"]
    logged(edge, "NOQUEUE: reject: RCPT from unknown[127.0.0.2]: 550 5.1.1 <bob@accepted.test>")


def test_sender_and_client_tables(edge: MtaProcess) -> None:
    with client(edge) as c:
        c.mail("s@spam.example")
        assert c.rcpt("alice@accepted.test") == (
            554,
            b"5.7.1 <s@spam.example>: Sender address rejected: no spam please",
        )
    with client(edge, REFUSED_CLIENT) as c:
        c.mail("s@client.example")
        assert c.rcpt("alice@accepted.test") == (
            554,
            b"5.7.1 <unknown[127.0.0.4]>: Client host rejected: Access denied",
        )


def test_hold_keeps_the_message_until_released(edge: MtaProcess, sink: CaptureSink) -> None:
    with client(edge) as c:
        c.mail("s@hold.example")
        assert c.rcpt("carol@accepted.test")[0] == 250
        code, text = c.data(b"Subject: held\r\n\r\nwait\r\n")
        assert code == 250
    queue_id = text.decode().rsplit(" ", 1)[-1]
    wait_until(lambda: [p.name for p in edge.files("hold")] == [queue_id], timeout=15)
    listing = json.loads(mta_cli(edge, "queue", "list", "--json").stdout)
    assert [(e["id"], e["state"]) for e in listing if e["id"] == queue_id] == [(queue_id, "hold")]
    assert not [m for m in sink.messages if b"Subject: held" in m.data]
    assert mta_cli(edge, "queue", "release", queue_id).returncode == 0
    wait_until(lambda: [m for m in sink.messages if b"Subject: held" in m.data], timeout=20)


def test_discard_says_250_and_delivers_nothing(edge: MtaProcess, sink: CaptureSink) -> None:
    with client(edge) as c:
        c.mail("s@discard.example")
        assert c.rcpt("alice@accepted.test")[0] == 250
        code, text = c.data(b"Subject: discarded\r\n\r\ngone\r\n")
        assert code == 250 and text.startswith(b"2.0.0 Ok: queued as ")
        c.mail("s@client.example")  # a control message on the same session, after it
        c.rcpt("alice@accepted.test")
        c.data(b"Subject: control\r\n\r\nhere\r\n")
    wait_until(lambda: [m for m in sink.messages if b"Subject: control" in m.data], timeout=20)
    wait_until(edge.queue_empty, timeout=20)
    assert not [m for m in sink.messages if b"Subject: discarded" in m.data]
    logged(edge, f"{text.decode().rsplit(' ', 1)[-1]}: discard:")


def test_a_listed_client_is_refused_at_rcpt(edge: MtaProcess) -> None:
    with client(edge, LISTED) as c:  # greeted: the lookup does not hold the greeting
        c.mail("s@client.example")
        assert c.rcpt("alice@accepted.test") == (
            554,
            b"5.7.1 Service unavailable; Client host [127.0.0.3] blocked using bl.test",
        )
    with client(edge) as c:  # not listed
        c.mail("s@client.example")
        assert c.rcpt("alice@accepted.test")[0] == 250


def test_an_early_talker_is_refused(edge: MtaProcess) -> None:
    with socket.create_connection(("127.0.0.1", edge.port), 10, (OUTSIDER, 0)) as sock:
        sock.sendall(b"EHLO impatient.example\r\n")
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = sock.recv(1024)
            assert chunk, f"closed without a reply after {reply!r}"
            reply += chunk
        assert reply == b"554 5.5.1 Error: protocol error, pre-greeting traffic\r\n"
        assert sock.recv(1024) == b""  # and closed
    logged(edge, "NOQUEUE: reject: CONNECT from unknown[127.0.0.2]: 554 5.5.1")


def test_rejects_are_counted_by_reason(edge: MtaProcess) -> None:
    with client(edge) as c:
        c.mail("s@client.example")
        assert c.rcpt("nobody@accepted.test")[0] == 550
        assert c.rcpt("x@other.test")[0] == 554

    def counts() -> dict[str, float]:
        url = f"http://127.0.0.1:{edge.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        found = {}
        for line in text.splitlines():
            if line.startswith("mta_smtpd_rejects_total{"):
                reason = line.split('reason="', 1)[1].split('"', 1)[0]
                found[reason] = float(line.rsplit(" ", 1)[1])
        return found

    wait_until(lambda: {"unknown_recipient", "relay_denied"} <= set(counts()), timeout=15)


# ----- reloading and bad tables --------------------------------------------------------


@pytest.fixture
def tabled(mta_factory: Callable[..., MtaProcess], tmp_path: Path) -> Callable[..., MtaProcess]:
    """A relay whose recipient table is ``tmp_path/recipients`` (written by the test)."""

    def start(wait: bool = True, **overrides: Any) -> MtaProcess:
        relay = {
            "networks": ["127.0.0.1/32"],
            "domains": ["accepted.test"],
            "recipients": str(tmp_path / "recipients"),
        }
        return mta_factory({"relay": relay, **overrides}, wait=wait)

    return start


def rcpt_code(relay: MtaProcess, recipient: str) -> int:
    with client(relay) as c:
        c.mail("s@client.example")
        return c.rcpt(recipient)[0]


def test_hup_rereads_the_tables(tabled: Callable[..., MtaProcess], tmp_path: Path) -> None:
    table = tmp_path / "recipients"
    table.write_text("alice@accepted.test\n")
    relay = tabled()
    assert rcpt_code(relay, "dave@accepted.test") == 550
    table.write_text("alice@accepted.test\ndave@accepted.test\n")
    assert rcpt_code(relay, "dave@accepted.test") == 550  # loaded once, not per lookup
    relay.signal(signal.SIGHUP)
    wait_until(lambda: rcpt_code(relay, "dave@accepted.test") == 250, timeout=30, interval=0.2)
    # a reload with a broken table is refused; the running tables stay
    table.write_text("alice@accepted.test\nnot an address\n")
    relay.signal(signal.SIGHUP)
    logged(relay, "reload failed")
    assert f"relay.recipients: {table}, line 2: 'not an address'" in relay.log()
    assert rcpt_code(relay, "dave@accepted.test") == 250
    assert relay.proc is not None and relay.proc.poll() is None


def test_a_bad_table_stops_the_start(tabled: Callable[..., MtaProcess], tmp_path: Path) -> None:
    (tmp_path / "recipients").write_text("alice@accepted.test\n")
    (tmp_path / "helo").write_text("good.example OK\nbad.example PERMIT\n")
    relay = tabled(access={"helo": str(tmp_path / "helo")}, wait=False)
    assert relay.proc is not None
    assert relay.proc.wait(30) == 78  # EX_CONFIG, before serving
    assert f"access.helo: {tmp_path / 'helo'}, line 2: 'bad.example'" in relay.log()
