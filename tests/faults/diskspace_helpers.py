"""What the full-disk fault tests (test_full_disk.py) do to a spool and count about it.

* :func:`tmpfs`: a small tmpfs mounted for the test as the spool's file system (root only;
  the test skips, saying why, when it cannot mount one).
* :class:`Ballast`: a file on that tmpfs that takes its free space, to a given amount or
  all of it, and gives it back.
* :class:`Sender`: a client in a thread sending tagged messages one connection each, and
  sorting every outcome: ``250`` (acknowledged: it must be delivered), ``452`` at MAIL,
  ``451`` after DATA, anything else.
* :func:`mail_reply`: what a new session's MAIL gets; :func:`open_fds`, :func:`process_of`,
  :func:`wait_for` (how long a condition took to come true).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import smtplib
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.delivery.sink import CaptureSink
from tests.helpers import child_pids

__all__ = [
    "Ballast",
    "MountFailedError",
    "Sender",
    "delivered_tags",
    "free_bytes",
    "mail_reply",
    "message",
    "open_fds",
    "process_of",
    "tmpfs",
    "wait_for",
]

_TAG = re.compile(rb"^X-Fault-Tag: (\d+)\r\n", re.M)


class MountFailedError(Exception):
    """The tmpfs could not be mounted (the text says why)."""


@contextlib.contextmanager
def tmpfs(path: Path, size: int) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` octets on ``path`` for the ``with`` block (root only)."""
    if os.geteuid() != 0:
        raise MountFailedError("mounting a tmpfs for the spool needs root")
    path.mkdir(parents=True, exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)]
    done = subprocess.run(mount, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise MountFailedError(f"mount -t tmpfs failed: {done.stderr.strip() or done.returncode}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(path)], check=False)  # a process still in it


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class Ballast:
    """A file that takes the free space of the file system it is on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self.size = 0

    def fill(self) -> None:
        """Take every free octet (until ENOSPC), in big then small steps."""
        for chunk in (b"\xaa" * (256 << 10), b"\xaa" * 4096):
            while self._write(chunk):
                pass

    def leave_free(self, octets: int) -> None:
        """Grow or shrink so that about ``octets`` stay free (to a page)."""
        surplus = free_bytes(self.path.parent) - octets
        if surplus > 0:
            chunk = b"\xaa" * (64 << 10)
            while surplus > 0 and self._write(chunk[: min(surplus, len(chunk))]):
                surplus -= min(surplus, len(chunk))
        elif surplus < 0:
            self.size = max(0, self.size + surplus)
            os.ftruncate(self.fd, self.size)

    def remove(self) -> None:
        os.close(self.fd)
        self.path.unlink()

    def _write(self, chunk: bytes) -> bool:
        try:
            written = os.pwrite(self.fd, chunk, self.size)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                return False
            raise
        self.size += written
        return written == len(chunk)


def message(tag: int, size: int) -> bytes:
    head = b"Subject: full disk %d\r\nX-Fault-Tag: %d\r\n\r\n" % (tag, tag)
    line = b"x" * 70 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def delivered_tags(sink: CaptureSink) -> Counter[int]:
    """How often the sink received each tag."""
    tags: Counter[int] = Counter()
    for captured in sink.messages:
        match = _TAG.search(captured.data)
        if match:
            tags[int(match.group(1))] += 1
    return tags


class Sender:
    """A client sending tagged messages in a thread, about ``rate`` a second, until stopped."""

    def __init__(self, port: int, size: int = 2048, rate: float = 100.0) -> None:
        self.port = port
        self.size = size
        self.pause = 1.0 / rate
        self.acked: list[int] = []  # tags that got 250 after DATA
        self.outcomes: Counter[str] = Counter()  # "250", "452 at MAIL", "451 after DATA", ...
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sender", daemon=True)

    def __enter__(self) -> Sender:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def count(self, outcome: str) -> int:
        with self._lock:
            return self.outcomes[outcome]

    def send_one(self, tag: int) -> str:
        """Send the message tagged ``tag`` now, in this thread; its outcome."""
        outcome = self._send(tag)
        with self._lock:
            self.outcomes[outcome] += 1
            if outcome == "250":
                self.acked.append(tag)
        return outcome

    def _run(self) -> None:
        tag = 0
        while not self._stop.is_set():
            tag += 1
            self.send_one(tag)
            self._stop.wait(self.pause)

    def _send(self, tag: int) -> str:
        try:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as client:
                client.sendmail("sender@client.test", ["rcpt@example.org"], message(tag, self.size))
            return "250"
        except smtplib.SMTPSenderRefused as exc:
            return self._classify(exc.smtp_code, exc.smtp_error, "at MAIL")
        except smtplib.SMTPDataError as exc:
            return self._classify(exc.smtp_code, exc.smtp_error, "after DATA")
        except (OSError, smtplib.SMTPException) as exc:
            return self._error(f"{type(exc).__name__}: {exc}")

    def _classify(self, code: int, text: bytes, where: str) -> str:
        expected = {"at MAIL": (452, b"4.3.1 "), "after DATA": (451, b"4.3.0 ")}[where]
        if (code, text[:6]) != expected:
            return self._error(f"{code} {text!r} {where}")
        return f"{code} {where}"

    def _error(self, text: str) -> str:
        with self._lock:
            self.errors.append(text)
        return "other"


def mail_reply(port: int, size: int | None = None) -> tuple[int, bytes]:
    """What MAIL (with ``SIZE=size``, if given) gets in a new session."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("probe.test")
        return client.mail("probe@client.test", [f"SIZE={size}"] if size is not None else [])


def process_of(master: int, kind: str) -> int:
    """The pid of the (first) live child of ``kind`` (``mta: <kind>`` in /proc/PID/comm)."""
    for pid in child_pids(master):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == f"mta: {kind}":
                return pid
        except FileNotFoundError:
            continue
    raise LookupError(f"no {kind} child of {master}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.05) -> float:
    """Seconds until ``predicate()`` was true; TimeoutError after ``timeout``."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"condition not met within {timeout}s")
        time.sleep(interval)
    return time.monotonic() - started
