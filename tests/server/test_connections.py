"""The node's shared connection table (mta/server/connections.py), with real processes.

Record locks belong to a process, so every table beyond the first is opened in a child
(fork), as each smtpd worker opens its own: the children count together with the parent,
and a child killed with SIGKILL stops counting once a survivor sweeps.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from mta.server.connections import SLOTS, TABLE_NAME, ConnectionTable, open_table

pytestmark = pytest.mark.timeout(30)


class Child:
    """A forked process that opens the table, reports ``count`` and waits to be killed."""

    def __init__(self, spool: Path, count: int) -> None:
        read, write = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the child: never returns into pytest
            try:
                os.close(read)
                table = open_table(str(spool))
                table.set_mine(count)
                os.write(write, table.slot.to_bytes(2, "little"))
                signal.pause()
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            self.slot = int.from_bytes(pipe.read(2), "little")

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)


@pytest.fixture
def children() -> Iterator[list[Child]]:
    made: list[Child] = []
    yield made
    for child in made:
        try:
            child.kill()
        except ProcessLookupError:
            pass


@pytest.fixture
def table(tmp_path: Path) -> Iterator[ConnectionTable]:
    table = open_table(str(tmp_path))
    yield table
    table.close()


def test_workers_count_together(
    tmp_path: Path, table: ConnectionTable, children: list[Child]
) -> None:
    table.set_mine(2)
    children.append(Child(tmp_path, 3))
    children.append(Child(tmp_path, 5))
    assert table.total() == 10
    assert sorted({table.slot, children[0].slot, children[1].slot}) == [1, 2, 3]
    assert (tmp_path / TABLE_NAME).stat().st_size == SLOTS * 8


def test_a_killed_worker_stops_counting_after_a_sweep(
    tmp_path: Path, table: ConnectionTable, children: list[Child]
) -> None:
    table.set_mine(1)
    victim = Child(tmp_path, 7)
    children.append(Child(tmp_path, 4))
    assert table.total() == 12
    assert table.sweep() == 0  # the living keep their counts
    victim.kill()
    assert table.sweep() == 1
    assert table.total() == 5
    again = Child(tmp_path, 0)  # the dead worker's slot is free for the next one
    children.append(again)
    assert again.slot == victim.slot


def test_a_new_worker_does_not_inherit_a_dead_ones_count(tmp_path: Path) -> None:
    dead = Child(tmp_path, 9)
    dead.kill()  # nobody swept: its count is still in the file
    table = open_table(str(tmp_path))
    try:
        assert table.slot == dead.slot
        assert table.total() == 0
    finally:
        table.close()


def test_a_closed_table_gives_its_slot_back(tmp_path: Path, children: list[Child]) -> None:
    children.append(Child(tmp_path, 3))
    first = open_table(str(tmp_path))
    first.set_mine(4)
    first.close()
    table = open_table(str(tmp_path))
    try:
        assert table.slot == first.slot
        assert table.total() == 3
    finally:
        table.close()
