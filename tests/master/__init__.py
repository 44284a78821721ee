"""Tests of the master: supervision, signals, metrics.

Its decisions are tested in the test's own process with a fake clock and fake children
(fakes.py, test_arbiter.py, test_throttle.py, test_heartbeat.py); what only a real process
tree shows is tested on real ones (test_supervision.py, test_signals.py, test_metrics.py,
test_prometheus.py).

The helpers below are shared by the test modules of this package: who the children of a
master are (each child names itself ``mta: <kind>`` in ``/proc/PID/comm``), a client that
sends mail in a loop and counts what went wrong, and a ``/metrics`` scraper.
"""

from __future__ import annotations

import smtplib
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import child_pids

__all__ = [
    "ClientLoop",
    "Scrape",
    "children_by_kind",
    "ehlo_size",
    "gone",
    "http_get",
    "message",
    "port_accepts",
    "scrape",
    "send_messages",
]


def children_by_kind(master: int) -> dict[str, list[int]]:
    """The live children of ``master``, grouped by kind: {"smtpd": [pid, ...], ...}."""
    kinds: dict[str, list[int]] = {}
    for pid in child_pids(master):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            continue
        if state != "Z":
            kinds.setdefault(comm.removeprefix("mta: "), []).append(pid)
    return kinds


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie nobody reaped yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def message(n: int, size: int = 600) -> bytes:
    line = b"line of message %d " % n + b"x" * 50 + b"\r\n"
    return b"Subject: master test %d\r\n\r\n" % n + line * max(1, size // len(line))


def send_messages(port: int, count: int, start: int = 0) -> int:
    """Send ``count`` messages, one connection each; return the octets of message data."""
    total = 0
    for n in range(start, start + count):
        data = message(n)
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            refused = client.sendmail(f"s{n}@client.test", [f"r{n}@example.org"], data)
            assert not refused
        total += len(data)
    return total


def ehlo_size(port: int) -> int:
    """The SIZE a new session advertises (RFC 1870)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        code, _ = client.ehlo("client.test")
        assert code == 250
        return int(client.esmtp_features["size"])


class ClientLoop:
    """Threads that send mail in a loop, each message on a new connection, and count.

    ``outcomes`` counts "ok", "refused" (connection refused), "421" (the server said it is
    shutting down), and "failed" (anything else: reset, timeout, unexpected reply); the
    texts of the failures are kept in ``errors``.
    """

    def __init__(self, port: int, threads: int = 2) -> None:
        self.port = port
        self.outcomes: Counter[str] = Counter()
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), name=f"client-{i}", daemon=True)
            for i in range(threads)
        ]

    def __enter__(self) -> ClientLoop:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> Counter[str]:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        return self.outcomes

    def wait_for(self, n: int, timeout: float = 20.0) -> None:
        """Until ``n`` more messages have been accepted from now on."""
        target = self.outcomes["ok"] + n
        deadline = time.monotonic() + timeout
        while self.outcomes["ok"] < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"client loop stuck: {dict(self.outcomes)} {self.errors[-3:]}")
            time.sleep(0.02)

    def _run(self, index: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            outcome = self._send_one(index, n)
            with self._lock:
                self.outcomes[outcome] += 1

    def _send_one(self, index: int, n: int) -> str:
        try:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as client:
                client.sendmail(f"loop{index}@client.test", ["r@example.org"], message(n, 300))
            return "ok"
        except ConnectionRefusedError:
            return "refused"
        except smtplib.SMTPResponseException as exc:
            if exc.smtp_code == 421:
                return "421"
            return self._failed(exc)
        except (OSError, smtplib.SMTPException) as exc:
            return self._failed(exc)

    def _failed(self, exc: Exception) -> str:
        with self._lock:
            self.errors.append(f"{type(exc).__name__}: {exc}")
        return "failed"


Labels = frozenset[tuple[str, str]]


class Scrape:
    """One ``/metrics`` page, parsed by prometheus-client's own parser."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, Labels], float] = {}
        self.families: set[str] = set()
        for family in text_string_to_metric_families(text):
            self.families.add(family.name)
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def value(self, name: str, **labels: str) -> float:
        """The sample's value, 0 when it is absent (a counter nobody touched yet)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def labelled(self, name: str) -> dict[Labels, float]:
        return {labels: v for (n, labels), v in self.samples.items() if n == name}


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


def scrape(metrics_port: int) -> Scrape:
    status, text = http_get(metrics_port, "/metrics")
    assert status == 200, text
    return Scrape(text)


def port_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False
