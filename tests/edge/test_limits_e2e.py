"""Per-client limits on a real ``mta serve`` with two smtpd workers and its anvil: they hold
for the node whichever worker takes a connection, per client address, not for exempt
networks, and mail keeps flowing while anvil is stopped or killed (the master restarts it).

Clients bind to different loopback addresses (127.0.0.0/8 is all local on Linux), so each
test's client is a client of its own.  To know which worker takes a connection, the other
one is stopped (SIGSTOP) meanwhile: both wait on the one shared listening socket.
"""

from __future__ import annotations

import signal
import smtplib
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.helpers import MtaProcess, wait_until
from tests.master import children_by_kind, scrape

pytestmark = pytest.mark.timeout(90)

LIMITS = {
    "connections": 3,
    "message_rate": 3,
    "recipient_rate": 4,
    "exempt_networks": ["127.0.0.9/32"],
}


class Client:
    """A raw SMTP client bound to ``source`` (a loopback address)."""

    def __init__(self, port: int, source: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), 10, (source, 0))
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply()

    def reply(self) -> bytes:
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError(f"closed by the server after {lines!r}")
            lines.append(line)
            if line[3:4] != b"-":
                return b"".join(lines)

    def cmd(self, line: str) -> bytes:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def closed(self) -> bool:
        return self.file.read(1) == b""

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture
def relay(mta_factory: Callable[..., MtaProcess]) -> MtaProcess:
    settings: dict[str, Any] = {
        "smtp": {"workers": 2},
        "limits": LIMITS,
        "master": {"heartbeat_timeout": 3},
    }
    server = mta_factory(settings)
    wait_until(lambda: len(children_by_kind(server.pid).get("smtpd", [])) == 2)
    wait_until(lambda: "anvil ready" in server.log(), timeout=15)
    return server


@contextmanager
def only(worker: int, relay: MtaProcess) -> Iterator[None]:
    """Only smtpd ``worker`` (0 or 1) accepts meanwhile: the other one is stopped."""
    workers = sorted(children_by_kind(relay.pid)["smtpd"])
    other = workers[1 - worker]
    signal_pid(other, signal.SIGSTOP)
    try:
        yield
    finally:
        signal_pid(other, signal.SIGCONT)


def signal_pid(pid: int, signum: int) -> None:
    import os

    os.kill(pid, signum)


def test_open_connections_are_limited_across_workers(relay: MtaProcess) -> None:
    held: list[Client] = []
    try:
        with only(0, relay):
            held += [Client(relay.port, "127.0.0.2") for _ in range(2)]
        with only(1, relay):
            held.append(Client(relay.port, "127.0.0.2"))
            excess = Client(relay.port, "127.0.0.2")  # the second on this worker: refused
        assert all(c.greeting.startswith(b"220 ") for c in held)
        assert excess.greeting == (
            b"421 4.7.0 mx.test Error: too many connections from 127.0.0.2\r\n"
        )
        assert excess.closed()
        other = Client(relay.port, "127.0.0.3")  # another address: its own count
        assert other.greeting.startswith(b"220 ")
        other.close()
        held.pop(0).close()
        # its slot is free once the worker has told anvil (a moment): then one more gets in
        wait_until(lambda: _greeted_and_kept(relay.port, "127.0.0.2", held))
    finally:
        for client in held:
            client.close()
    text = relay.log()
    assert (
        "warning: Connection concurrency limit exceeded: 4 from unknown[127.0.0.2] "
        "for service smtp" in text
    )
    assert "NOQUEUE: reject: CONNECT from unknown[127.0.0.2]: 421 4.7.0" in text
    rejects = scrape(relay.config["metrics"]["listen"].rpartition(":")[2])
    assert rejects.value("mta_smtpd_limit_rejects_total", limit="connections") >= 1


def _greeted_and_kept(port: int, source: str, held: list[Client]) -> bool:
    client = Client(port, source)
    if client.greeting.startswith(b"220 "):
        held.append(client)
        return True
    client.close()
    return False


def test_exempt_networks_are_not_limited(relay: MtaProcess) -> None:
    clients = [Client(relay.port, "127.0.0.9") for _ in range(LIMITS["connections"] + 2)]
    try:
        assert all(c.greeting.startswith(b"220 ") for c in clients)
        clients[0].cmd("EHLO client.test")
        for _ in range(LIMITS["message_rate"] + 2):
            assert clients[0].cmd("MAIL FROM:<a@client.test>").startswith(b"250")
            assert clients[0].cmd("RSET").startswith(b"250")
        limited = Client(relay.port, "127.0.0.10")  # outside them, the same number is too many
        limited.cmd("EHLO client.test")
        codes = []
        for _ in range(LIMITS["message_rate"] + 2):
            codes.append(limited.cmd("MAIL FROM:<a@client.test>")[:3])
            limited.cmd("RSET")
        assert codes == [b"250"] * LIMITS["message_rate"] + [b"450"] * 2
    finally:
        for client in clients:
            client.close()


def test_message_and_recipient_rates_hold_across_sessions_and_workers(
    relay: MtaProcess,
) -> None:
    sent = 0
    for worker in (0, 1, 0):  # each session on a worker of its own choosing
        with only(worker, relay):
            client = Client(relay.port, "127.0.0.4")
        client.cmd("EHLO client.test")
        reply = client.cmd("MAIL FROM:<a@client.test>")
        client.close()
        if reply.startswith(b"450"):
            break
        sent += 1
    client = Client(relay.port, "127.0.0.4")
    client.cmd("EHLO client.test")
    assert sent == LIMITS["message_rate"]
    assert client.cmd("MAIL FROM:<a@client.test>") == (
        b"450 4.7.1 Error: too much mail from 127.0.0.4\r\n"
    )
    client.close()

    client = Client(relay.port, "127.0.0.5")
    client.cmd("EHLO client.test")
    assert client.cmd("MAIL FROM:<a@client.test>").startswith(b"250")
    codes = [client.cmd(f"RCPT TO:<r{n}@example.org>")[:3] for n in range(6)]
    assert codes == [b"250"] * LIMITS["recipient_rate"] + [b"450"] * 2
    assert client.cmd("RCPT TO:<x@example.org>") == (
        b"450 4.7.1 Error: too many recipients from 127.0.0.5\r\n"
    )
    client.close()
    text = relay.log()
    assert "warning: Message delivery request rate limit exceeded: 4 from unknown[127.0.0.4]" in (
        text
    )
    assert (
        "NOQUEUE: reject: RCPT from unknown[127.0.0.5]: 450 4.7.1 Error: too many recipients "
        "from 127.0.0.5; from=<a@client.test> to=<r4@example.org>" in text
    )


def test_connection_rate(mta_factory: Callable[..., MtaProcess]) -> None:
    relay = mta_factory(
        {"smtp": {"workers": 2}, "limits": {"connection_rate": 5, "exempt_networks": []}}
    )
    wait_until(lambda: "anvil ready" in relay.log(), timeout=15)
    greetings = []
    for _ in range(7):
        client = Client(relay.port, "127.0.0.6")
        greetings.append(client.greeting)
        client.close()
    assert [g[:3] for g in greetings] == [b"220"] * 5 + [b"421"] * 2
    assert greetings[-1] == b"421 4.7.0 mx.test Error: too many connections from 127.0.0.6\r\n"
    assert Client(relay.port, "127.0.0.7").greeting.startswith(b"220 ")
    assert "warning: Connection rate limit exceeded: 6 from unknown[127.0.0.6]" in relay.log()


def test_mail_flows_while_anvil_is_down_and_the_master_restarts_it(relay: MtaProcess) -> None:
    metrics_port = int(relay.config["metrics"]["listen"].rpartition(":")[2])
    anvil = children_by_kind(relay.pid)["anvil"][0]
    signal_pid(anvil, signal.SIGSTOP)  # slow: the workers' questions time out
    _send_one(relay.port, "127.0.0.8")
    assert scrape(metrics_port).value("mta_smtpd_limits_fallback") == 1
    # the master kills it for its silent heartbeat and starts another; the workers return
    restarted = wait_until(lambda: _anvil_other_than(relay, anvil), timeout=20)
    wait_until(lambda: scrape(metrics_port).value("mta_smtpd_limits_fallback") == 0, timeout=20)
    signal_pid(restarted, signal.SIGKILL)
    _send_one(relay.port, "127.0.0.8")
    wait_until(lambda: _anvil_other_than(relay, restarted), timeout=20)
    wait_until(lambda: relay.log().count("anvil is back") >= 2, timeout=20)
    _send_one(relay.port, "127.0.0.8")
    assert "anvil unreachable" in relay.log()


def _anvil_other_than(relay: MtaProcess, pid: int) -> int | None:
    pids = [p for p in children_by_kind(relay.pid).get("anvil", []) if p != pid]
    return pids[0] if pids else None


def _send_one(port: int, source: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=(source, 0)) as client:
        assert not client.sendmail("a@client.test", ["r@example.org"], b"Subject: x\r\n\r\nx\r\n")
