"""Load, counting and watching for the master's fault tests (test_kill.py, test_hup.py).

* :class:`Load` sends mail continuously at a set rate from threads of the test, each
  message with a unique ``Message-ID``, and records which ones got their ``250``.
* :func:`tally` counts what a :class:`CaptureSink` received, by ``Message-ID``: lost
  (acknowledged, never delivered) and duplicated copies.
* :class:`Watch` samples the tree every few milliseconds: how long no smtpd process ran
  at all (in total and at most in one stretch), and, as a normal client would see it, how
  long a new connection waits for its greeting.
* :func:`restart_delays` reads from the master's log how long each slot stayed empty
  after its child died, and whether that child had been ready.

Everything runs in threads of the test process and stops when told; nothing here sleeps
for a fixed time where it could wait for a condition.
"""

from __future__ import annotations

import os
import random
import re
import signal
import smtplib
import socket
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from tests.delivery.sink import CaptureSink
from tests.master import children_by_kind

__all__ = ["Load", "Restart", "Tally", "Watch", "kill_random_child", "restart_delays", "tally"]

_MESSAGE_ID = re.compile(rb"^Message-ID: <([^>]+)>\r?$", re.M | re.I)


class Load:
    """Threads that each keep one SMTP session and send ``rate`` messages a second in all.

    A message counts as acknowledged only once its ``250`` after DATA arrived; anything
    else (a refused connection, a reset, a 4xx) is counted in :attr:`failures` and the
    thread reconnects.  Message-IDs are ``<thread.n.tag@fault.test>``.
    """

    def __init__(self, port: int, rate: float, threads: int = 2, tag: str = "load") -> None:
        self.port = port
        self.interval = threads / rate  # seconds between two messages of one thread
        self.tag = tag
        self.acked: set[str] = set()
        self.sent = 0
        self.failures: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), name=f"load-{i}", daemon=True)
            for i in range(threads)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def acked_count(self) -> int:
        with self._lock:
            return len(self.acked)

    def unsettled(self, received: Counter[str]) -> int:
        """Messages acknowledged and not yet ``received``, plus one in progress per thread."""
        with self._lock:
            acked = list(self.acked)
        return sum(1 for m in acked if m not in received) + len(self._threads)

    def wait_acked(self, n: int, timeout: float = 30.0) -> None:
        """Until ``n`` more messages have been acknowledged from now on."""
        target = self.acked_count() + n
        deadline = time.monotonic() + timeout
        while self.acked_count() < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"load stuck at {self.acked_count()}: {dict(self.failures)}")
            time.sleep(0.02)

    def _run(self, index: int) -> None:
        n = 0
        next_at = time.monotonic()
        client: smtplib.SMTP | None = None
        while not self._stop.is_set():
            next_at = max(next_at + self.interval, time.monotonic() - 1.0)  # no catch-up burst
            self._stop.wait(max(0.0, next_at - time.monotonic()))
            n += 1
            message_id = f"{index}.{n}.{self.tag}@fault.test"
            try:
                if client is None:
                    client = smtplib.SMTP("127.0.0.1", self.port, timeout=20)
                    client.ehlo("load.test")
                with self._lock:
                    self.sent += 1
                client.sendmail("load@client.test", ["r@example.org"], _message(message_id))
            except (OSError, smtplib.SMTPException) as exc:
                self._failed(exc)
                client = _close(client)
                continue
            with self._lock:
                self.acked.add(message_id)
        _close(client)

    def _failed(self, exc: Exception) -> None:
        if isinstance(exc, smtplib.SMTPResponseException):
            kind = str(exc.smtp_code)
        else:
            kind = type(exc).__name__
        with self._lock:
            self.failures[kind] += 1


def _message(message_id: str) -> bytes:
    body = b"fault test line " + b"x" * 60 + b"\r\n"
    return f"Message-ID: <{message_id}>\r\nSubject: fault\r\n\r\n".encode() + body * 5


def _close(client: smtplib.SMTP | None) -> None:
    if client is not None:
        try:
            client.close()
        except OSError:
            pass
    return None


@dataclass
class Tally:
    acked: int
    delivered: int  # distinct acknowledged messages the sink received
    lost: list[str]  # acknowledged, never received
    duplicates: int  # extra copies received, of any message
    unacked_delivered: int  # received without a 250 reaching the client (allowed)

    def __str__(self) -> str:
        return (
            f"acked {self.acked}, delivered {self.delivered}, lost {len(self.lost)}, "
            f"duplicated {self.duplicates}, delivered without 250 {self.unacked_delivered}"
        )


def received_ids(sink: CaptureSink) -> Counter[str]:
    ids: Counter[str] = Counter()
    for message in sink.messages:
        match = _MESSAGE_ID.search(message.data)
        if match:
            ids[match.group(1).decode()] += 1
    return ids


def tally(load: Load, sink: CaptureSink) -> Tally:
    ids = received_ids(sink)
    lost = sorted(m for m in load.acked if m not in ids)
    return Tally(
        acked=len(load.acked),
        delivered=sum(1 for m in load.acked if m in ids),
        lost=lost,
        duplicates=sum(n - 1 for n in ids.values()),
        unacked_delivered=sum(1 for m in ids if m not in load.acked),
    )


def wait_delivered(load: Load, sink: CaptureSink, timeout: float) -> Tally:
    """Until every acknowledged message has arrived (or ``timeout``); the final tally."""
    deadline = time.monotonic() + timeout
    while True:
        result = tally(load, sink)
        if not result.lost or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


@dataclass
class Watch:
    """Samples the tree of ``master`` in a thread: stretches without any smtpd process,
    and a normal client's time to greeting (a new connection every ``probe_every`` s)."""

    port: int
    master: int
    probe_every: float = 0.2
    sample_every: float = 0.01
    no_smtpd_total: float = 0.0
    no_smtpd_longest: float = 0.0
    greetings: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Watch:
        for target in (self._sample, self._probe):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def greeting_summary(self) -> str:
        if not self.greetings:
            return "no greeting measured"
        times = sorted(self.greetings)
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
        return (
            f"{len(times)} greetings: median {statistics.median(times) * 1000:.0f} ms, "
            f"p99 {p99 * 1000:.0f} ms, max {times[-1] * 1000:.0f} ms"
        )

    def _sample(self) -> None:
        gap_since: float | None = None
        last = time.monotonic()
        while not self._stop.wait(self.sample_every):
            now = time.monotonic()
            if children_by_kind(self.master).get("smtpd"):
                gap_since = None
            else:
                self.no_smtpd_total += now - last
                gap_since = last if gap_since is None else gap_since
                self.no_smtpd_longest = max(self.no_smtpd_longest, now - gap_since)
            last = now

    def _probe(self) -> None:
        while not self._stop.wait(self.probe_every):
            start = time.monotonic()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=30) as s:
                    if s.recv(512).startswith(b"220"):
                        self.greetings.append(time.monotonic() - start)
                        s.sendall(b"QUIT\r\n")
            except OSError:
                continue  # refused while the whole tree is down: not a greeting


def kill_random_child(master: int, rng: random.Random) -> tuple[str, int] | None:
    """kill -9 one child of ``master`` chosen at random; its (kind, pid)."""
    children = [(kind, pid) for kind, pids in children_by_kind(master).items() for pid in pids]
    if not children:
        return None
    kind, pid = rng.choice(children)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return None
    return kind, pid


_MASTER = r"^(\S+ \S+) mta\[\d+\] mta\.master: "
_DIED = re.compile(_MASTER + r"(\w+#\d+)\[\d+\] died \(.*?\) after [\d.]+s(, before it was ready)?")
_STARTED = re.compile(_MASTER + r"started (\w+#\d+)\[\d+\]$")


@dataclass(frozen=True)
class Restart:
    slot: str  # "smtpd#0"
    ready: bool  # the child that died had been ready
    delay: float  # seconds from its death to its successor's start (inf: none started)


def restart_delays(log: str) -> list[Restart]:
    """Each death of a child in the master's ``log``, with how long its slot stayed empty."""
    deaths: dict[str, tuple[datetime, bool]] = {}
    restarts = []
    for line in log.splitlines():
        if died := _DIED.match(line):
            deaths[died.group(2)] = (_when(died.group(1)), died.group(3) is None)
        elif (started := _STARTED.match(line)) and started.group(2) in deaths:
            when, ready = deaths.pop(started.group(2))
            delay = (_when(started.group(1)) - when).total_seconds()
            restarts.append(Restart(started.group(2), ready, delay))
    restarts.extend(Restart(slot, ready, float("inf")) for slot, (_, ready) in deaths.items())
    return restarts


def _when(stamp: str) -> datetime:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f")
