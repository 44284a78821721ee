"""Process-tree accounting and small process helpers shared by the benchmark modules.

Everything here reads ``/proc`` (Linux only):

* :func:`tree` is a process and all its descendants, found from the ``ppid`` of every
  process (one scan of ``/proc``, so a tree of 10,000 Postfix ``smtpd`` processes is cheap).
* :func:`cpu_seconds` sums ``utime + stime + cutime + cstime`` over a tree: the ``c`` fields
  hold the CPU of children that already exited and were reaped, so a Postfix ``smtpd`` that
  served a session and went away still counts (its master reaps it).
* :func:`memory` sums RSS over a tree (what ``ps`` shows; shared pages are counted once per
  process) and PSS (shared pages divided among the processes sharing them), the fairer
  figure for a design with many processes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "cpu_seconds",
    "free_port",
    "kill_tree",
    "memory",
    "stop_process",
    "tree",
    "wait_for_greeting",
]

_TICK = os.sysconf("SC_CLK_TCK")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (small race: fine for loopback benchmarks)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the ``(comm)``; index 0 is the state."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return text[text.rfind(")") + 2 :].split()


def _parents() -> dict[int, int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                parents[int(entry)] = int(fields[1])
    return parents


def tree(root: int) -> list[int]:
    """``root`` and every live descendant (empty if ``root`` is gone)."""
    parents = _parents()
    if root not in parents:
        return []
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU of ``pids`` and of their reaped children, in seconds."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:  # fields[11:15] = utime stime cutime cstime
            ticks += sum(int(v) for v in fields[11:15])
    return ticks / _TICK


def memory(pids: Iterable[int]) -> dict[str, int]:
    """``{"rss": bytes, "pss": bytes, "processes": n}`` summed over ``pids``."""
    rss = pss = count = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        count += 1
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key == "Rss":
                rss += int(value.split()[0]) * 1024
            elif key == "Pss":
                pss += int(value.split()[0]) * 1024
    return {"rss": rss, "pss": pss, "processes": count}


def wait_for_greeting(host: str, port: int, timeout: float = 20.0) -> None:
    """Return once ``host:port`` answers with a 220 greeting; TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                s.settimeout(2)
                if s.recv(512).startswith(b"220"):
                    with contextlib.suppress(OSError):
                        s.sendall(b"QUIT\r\n")
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"nothing greets on {host}:{port} within {timeout:.0f}s")


def kill_tree(root: int) -> None:
    """SIGKILL ``root`` and its descendants (the last resort of every ``stop``)."""
    for pid in reversed(tree(root)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """TERM ``proc``, wait up to ``timeout`` seconds, then kill its whole tree."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        return None
