"""The resident memory of a process tree, sampled from ``/proc`` while a test runs.

:class:`TreeRss` follows the master and all its descendants (children come and go: each
sample walks the tree afresh), sums their ``VmRSS`` and keeps the peak of the sum and the
peak of each process, named by ``/proc/<pid>/comm`` (a child of the master names itself
``mta: <kind>``).  RSS counts the pages a process has mapped, its own and shared ones, not
the page cache its reads go through, so a message read with ``read(2)`` and dropped again
does not count, and one held in memory does.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import TracebackType

__all__ = ["TreeRss", "process_rss", "tree_pids"]

MIB = 1024 * 1024


def tree_pids(root: int) -> list[int]:
    """``root`` and every descendant that is alive now."""
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        try:
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo.extend(int(p) for p in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue  # it exited while we looked
    return pids


def process_rss(pid: int) -> tuple[str, int]:
    """(name, resident octets) of ``pid``; ("", 0) if it is gone."""
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return "", 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return name, int(line.split()[1]) * 1024
    return name, 0  # a zombie has no VmRSS


class TreeRss:
    """Sample the tree under ``root`` every ``interval`` seconds in a thread, from
    ``with`` to its end (and once at each end, so that even a short run has samples)."""

    def __init__(self, root: int, interval: float = 0.05) -> None:
        self.root = root
        self.interval = interval
        self.peak = 0  # octets: the largest sum over the tree in one sample
        self.first = 0  # octets: the sum in the first sample (the tree at rest)
        self.samples = 0
        self.peak_by_process: dict[tuple[int, str], int] = {}  # (pid, name) → octets
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-rss", daemon=True)

    def sample(self) -> int:
        total = 0
        for pid in tree_pids(self.root):
            name, rss = process_rss(pid)
            total += rss
            key = (pid, name)
            if rss > self.peak_by_process.get(key, 0):
                self.peak_by_process[key] = rss
        if not self.samples:
            self.first = total
        self.samples += 1
        self.peak = max(self.peak, total)
        return total

    def __enter__(self) -> TreeRss:
        self.sample()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def report(self) -> str:
        """One line for the test's output and the issue note: peak, at rest, per process."""
        per = sorted(self.peak_by_process.items(), key=lambda item: -item[1])
        parts = ", ".join(f"{name or '?'}[{pid}] {rss / MIB:.0f}" for (pid, name), rss in per)
        return (
            f"tree RSS peak {self.peak / MIB:.0f} MiB (at rest {self.first / MIB:.0f} MiB, "
            f"{self.samples} samples); per-process peaks in MiB: {parts}"
        )
