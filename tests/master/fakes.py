"""Stand-ins for what the arbiter asks of the system: a clock and its processes.

With these the arbiter runs in the test's own process, one round at a time, as gunicorn
tests its arbiter: no fork, no signal, no waiting.  :class:`FakeProcesses` records every
spawn, kill and exit in one ``events`` list, in order, so a test can check what happened
before what.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from mta.config import Config

__all__ = ["FakeChild", "FakeClock", "FakeProcesses"]


class FakeClock:
    """Monotonic and wall time that move only when told to (:meth:`advance`)."""

    def __init__(self, start: float = 1000.0, epoch: float = 1_800_000_000.0) -> None:
        self.now = start
        self.epoch = epoch  # wall time = epoch + monotonic time

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.epoch + self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(eq=False)
class FakeChild:
    kind: str
    pid: int
    heartbeat: str
    config: Config
    stubborn: bool = False  # ignores SIGTERM (only SIGKILL ends it)
    exit_code: int | None = None  # set once it has exited; negative: killed by a signal


class FakeProcesses:
    """The ``processes`` seam of the arbiter: spawn, kill and reap, all pretend.

    A child lives until the test ends it (:meth:`exit`) or the arbiter signals it: SIGTERM
    ends it with status 0 unless it is stubborn, SIGKILL always ends it.  An ended child is
    handed to the arbiter by the next :meth:`reap`, as ``waitpid`` would, and ``on_exit``
    (if set) is called, as the kernel would send SIGCHLD.  ``on_spawn`` (if set) is called
    with the kind and pid of each new child, before it is handed to the arbiter.
    """

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.children: dict[int, FakeChild] = {}
        self.events: list[tuple[str, str, int]] = []  # ("spawn"|"TERM"|"KILL"|"exit", kind, pid)
        self._next_pid = 4000
        self._exited: list[int] = []
        self.on_spawn: Callable[[str, int], None] | None = None
        self.on_exit: Callable[[], object] | None = None

    # ----- the seam ------------------------------------------------------------------------

    def spawn(
        self,
        kind: str,
        config: Config,
        sockets: list[socket.socket],
        heartbeat: str,
        close_fds: list[int],
        slot: int = 0,
    ) -> int:
        self._next_pid += 1
        pid = self._next_pid
        self.children[pid] = FakeChild(kind, pid, heartbeat, config)
        self.events.append(("spawn", kind, pid))
        if self.on_spawn is not None:
            self.on_spawn(kind, pid)
        return pid

    def kill(self, pid: int, signum: int) -> None:
        child = self.children.get(pid)
        if child is None or child.exit_code is not None:
            return  # already gone, like ProcessLookupError
        self.events.append((signal.Signals(signum).name.removeprefix("SIG"), child.kind, pid))
        if signum == signal.SIGKILL:
            self.exit(pid, -signal.SIGKILL)
        elif signum == signal.SIGTERM and not child.stubborn:
            self.exit(pid, 0)

    def reap(self) -> Iterator[tuple[int, int]]:
        # what exits while the arbiter handles these (a TERM it sends) is for the next reap
        exited, self._exited = self._exited, []
        for pid in exited:
            code = self.children[pid].exit_code
            assert code is not None
            yield pid, code

    # ----- what a test does to its children ------------------------------------------------

    def exit(self, pid: int, code: int) -> None:
        child = self.children[pid]
        assert child.exit_code is None, f"{pid} exited twice"
        child.exit_code = code
        self._exited.append(pid)
        self.events.append(("exit", child.kind, pid))
        if self.on_exit is not None:
            self.on_exit()

    def beat(self, pid: int) -> None:
        """The child proves it is alive: its heartbeat file gets the (fake) wall time."""
        now = self.clock.time()
        os.utime(self.children[pid].heartbeat, (now, now))

    def beat_all(self) -> None:
        for pid in self.running():
            self.beat(pid)

    def running(self, kind: str | None = None) -> list[int]:
        """Pids of the children that have not exited (in the order they were spawned)."""
        return [
            pid
            for pid, child in self.children.items()
            if child.exit_code is None and kind in (None, child.kind)
        ]

    def spawned(self, kind: str) -> list[int]:
        return [pid for event, k, pid in self.events if event == "spawn" and k == kind]
