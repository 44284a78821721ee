"""The node's count of open SMTP connections, shared by the smtpd workers of one spool.

``smtp.max_connections`` holds for the node (DESIGN.md §7: a counter that must hold across
workers has one owner per node behind an interface; this is the local implementation of
:class:`NodeCounter`, a cluster one can come later).  The workers share nothing else, so the
count must cost no round trip and no lock on the hot path, and must survive kill -9.

Layout: one small file mapped by every worker (``smtpd.connections`` in the spool root),
:data:`SLOTS` little-endian signed 64-bit slots.  Slot 0 is a header: one more than the
highest slot ever claimed, so that a reader sums only the slots in use.  Slot *i* ≥ 1
belongs to the worker that holds an ``fcntl`` write lock on its bytes; that worker alone
writes it (its number of open connections).  A reader sums the slots without locking:
aligned 8-byte stores and loads are atomic on the platforms we run on, and a sum that is a
connection out of date for a moment is fine for a limit.

Invariants and failures:

* The kernel drops a process's record locks when it dies, however it dies.  A slot whose
  lock is free is stale: :meth:`ConnectionTable.sweep` (once a second from each worker)
  takes the lock of every non-zero foreign slot it can, zeroes it and lets it go, so a
  killed worker's connections stop counting within about a second.
* Record locks also vanish when the process closes *any* descriptor of the file, so a
  worker opens it exactly once, and the file is never opened by another part of a worker.
* The file is created and grown under a lock on a byte past the slots, writing zeros only
  past its current end: a starting worker never overwrites a slot that another one holds.
  Its blocks are written, not sparse, so a full disk (or tmpfs) cannot turn a store into
  SIGBUS.
* Two workers that accept at the same instant may each miss the other's new connection
  (a store then a load, each in its own process): the limit can be passed by at most
  workers - 1 for that instant, never by more.
* If the file cannot be created or no slot is free, :func:`open_table` raises OSError; the
  worker then counts alone (and logs why).
"""

from __future__ import annotations

import fcntl
import mmap
import os
from typing import Protocol

__all__ = ["SLOTS", "TABLE_NAME", "ConnectionTable", "LocalCounter", "NodeCounter", "open_table"]

TABLE_NAME = "smtpd.connections"
SLOTS = 1024  # header + 1023 workers: more than any node runs, even during a rolling reload
_SLOT = 8
_SIZE = SLOTS * _SLOT
_INIT_LOCK = _SIZE  # a byte past the slots: held while the file is created or grown


class NodeCounter(Protocol):
    """How many connections the node has open; each worker reports its own."""

    def set_mine(self, count: int) -> None: ...
    def total(self) -> int: ...
    def sweep(self) -> int: ...
    def close(self) -> None: ...


class LocalCounter:
    """A node of one worker (or a worker that could not open the table): its own count."""

    def __init__(self) -> None:
        self._count = 0

    def set_mine(self, count: int) -> None:
        self._count = count

    def total(self) -> int:
        return self._count

    def sweep(self) -> int:
        return 0

    def close(self) -> None:
        pass


class ConnectionTable:
    """One worker's view of the shared table: its own slot and the sum of all."""

    def __init__(self, fd: int, slot: int) -> None:
        self._fd = fd
        self._map = mmap.mmap(fd, _SIZE)
        self._slots = memoryview(self._map).cast("q")
        self.slot = slot

    def set_mine(self, count: int) -> None:
        self._slots[self.slot] = count

    def total(self) -> int:
        slots = self._slots
        return sum(slots[1 : slots[0]])

    def sweep(self) -> int:
        """Zero the slots of workers that died; how many were zeroed."""
        slots = self._slots
        zeroed = 0
        for i in range(1, slots[0]):
            if i != self.slot and slots[i] and _try_lock(self._fd, i):
                slots[i] = 0
                fcntl.lockf(self._fd, fcntl.LOCK_UN, _SLOT, i * _SLOT)
                zeroed += 1
        return zeroed

    def close(self) -> None:
        """Give the slot back (zeroed first, so no reader counts it meanwhile)."""
        self._slots[self.slot] = 0
        self._slots.release()
        self._map.close()
        os.close(self._fd)  # drops the lock


def open_table(spool_path: str) -> ConnectionTable:
    """Map the spool's table, creating it if needed, and claim a free slot."""
    path = os.path.join(spool_path, TABLE_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX, 1, _INIT_LOCK)  # waits for a worker starting now
        try:
            _grow(fd)
            slot = _claim(fd)
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, _INIT_LOCK)
        table = ConnectionTable(fd, slot)
    except BaseException:
        os.close(fd)
        raise
    table.set_mine(0)  # what a dead owner left in it counts no more
    return table


def _grow(fd: int) -> None:
    size = os.fstat(fd).st_size
    if size < _SIZE:
        os.pwrite(fd, bytes(_SIZE - size), size)  # real zeros: no sparse pages (SIGBUS)


def _claim(fd: int) -> int:
    """Lock the lowest free slot (called under the init lock, so the header is ours)."""
    for slot in range(1, SLOTS):
        if _try_lock(fd, slot):
            header = int.from_bytes(os.pread(fd, _SLOT, 0), "little", signed=True)
            if header <= slot:
                os.pwrite(fd, (slot + 1).to_bytes(_SLOT, "little", signed=True), 0)
            return slot
    raise OSError(f"all {SLOTS - 1} slots of the connection table are taken")


def _try_lock(fd: int, slot: int) -> bool:
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, _SLOT, slot * _SLOT)
    except (BlockingIOError, PermissionError):  # EAGAIN or EACCES: a live process holds it
        return False
    return True
