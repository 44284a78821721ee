"""Queue IDs: unique across processes, sortable by time, safe as file names.

An ID is 13 upper-case hex digits of microseconds since the epoch followed by 6 of the
process id: ``0195F3A2B7C41`` + ``00A3F1``.  Within a process the time part is forced to
grow strictly, so two IDs from one process never collide; two processes differ in the pid
part.  Sorting IDs as strings sorts them by the time they were made.  The spool creates
files with ``O_EXCL``, so even a clock stepping back cannot overwrite a message.

The pid part names the process that made the ID, and with it the writer of a file named
by it (a message being written in ``tmp/``, a segment): :func:`writer_alive` tells whether
that process still runs, which is how the queue manager knows a leftover from a file
still being written.
"""

from __future__ import annotations

import os
import re
import time

__all__ = [
    "QUEUE_ID_PATTERN",
    "is_queue_id",
    "new_queue_id",
    "pid_alive",
    "queue_id_pid",
    "queue_id_time",
    "writer_alive",
]

QUEUE_ID_PATTERN = re.compile(r"^[0-9A-F]{19}$")

_last_us = 0
_pid = -1
_pid_hex = ""


def new_queue_id() -> str:
    """A fresh queue ID (see the module docstring for the format)."""
    global _last_us, _pid, _pid_hex
    pid = os.getpid()
    if pid != _pid:  # after fork the child gets its own suffix
        _pid, _pid_hex = pid, f"{pid & 0xFFFFFF:06X}"
    now_us = time.time_ns() // 1000
    _last_us = now_us if now_us > _last_us else _last_us + 1
    return f"{_last_us:013X}{_pid_hex}"


def is_queue_id(name: str) -> bool:
    return QUEUE_ID_PATTERN.match(name) is not None


def queue_id_time(queue_id: str) -> float:
    """When the ID was made, in seconds since the epoch."""
    return int(queue_id[:13], 16) / 1e6


def queue_id_pid(queue_id: str) -> int:
    """The pid (its low 24 bits) of the process that made the ID."""
    return int(queue_id[13:], 16)


def pid_alive(pid: int, started_by: float | None = None) -> bool:
    """Is process ``pid`` still running?  A zombie is not (it has stopped writing).

    ``started_by`` (seconds since the epoch): a process that started after it is another
    one that reuses the pid, so the one asked about is gone.  (Reading a segment waits
    for its writer's death: a reused pid must not make it wait for a stranger's.)
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell: assume it runs, so nothing is taken from under it
    # "pid (comm) S ...": the state follows the last ")", as comm may hold one itself
    fields = stat[stat.rfind(b")") + 2 :].split()
    if not fields or fields[0] == b"Z":
        return False
    if started_by is None or len(fields) < 20:
        return True
    started = _boot_time() + int(fields[19]) / _CLOCK_TICKS  # field 22, starttime
    return started <= started_by + 1.0  # a second of slack for the clocks' rounding


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_boot = 0.0


def _boot_time() -> float:
    """When the system booted (``btime`` in /proc/stat), read once."""
    global _boot
    if not _boot:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    _boot = float(line.split()[1])
                    break
    return _boot


def writer_alive(queue_id: str) -> bool:
    """Is the process that made ``queue_id`` (and writes the file it names) running?"""
    return pid_alive(queue_id_pid(queue_id), started_by=queue_id_time(queue_id))
