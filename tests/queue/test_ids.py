"""Queue IDs: format, uniqueness within and across processes, order by time."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

from mta.queue.ids import (
    QUEUE_ID_PATTERN,
    is_queue_id,
    new_queue_id,
    pid_alive,
    queue_id_pid,
    queue_id_time,
    writer_alive,
)

CHILDREN = 4
PER_CHILD = 2000


def test_format_is_19_upper_hex_digits() -> None:
    queue_id = new_queue_id()
    assert len(queue_id) == 19
    assert QUEUE_ID_PATTERN.match(queue_id)
    assert is_queue_id(queue_id)
    assert queue_id == queue_id.upper()
    assert int(queue_id, 16) >= 0
    assert queue_id.endswith("%06X" % (os.getpid() & 0xFFFFFF))


def test_is_queue_id_refuses_other_names() -> None:
    good = new_queue_id()
    bad = ["", good.lower(), good + "0", good[:-1], ".probe-1", "../" + good[3:], good[:18] + "G"]
    for name in bad:
        assert not is_queue_id(name), name


def test_time_part_is_now() -> None:
    before = time.time()
    queue_id = new_queue_id()
    after = time.time()
    assert before - 0.001 <= queue_id_time(queue_id) <= after + 1.0


def test_ids_of_one_process_are_unique_and_increasing() -> None:
    ids = [new_queue_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert all(a < b for a, b in itertools.pairwise(ids))  # strictly: sorted and unique


def test_ids_sort_by_time() -> None:
    first = new_queue_id()
    time.sleep(0.005)
    second = new_queue_id()
    assert first < second
    assert queue_id_time(second) - queue_id_time(first) >= 0.004


def _child(start_fd: int, out: Path) -> None:
    """In a forked child: wait for the start signal, make IDs, write them, exit."""
    code = 1
    try:
        os.read(start_fd, 1)  # EOF when the parent closes its end: all children start at once
        ids = [new_queue_id() for _ in range(PER_CHILD)]
        out.write_text("\n".join(ids))
        code = 0
    finally:
        os._exit(code)


def test_ids_are_unique_across_forked_processes(tmp_path: Path) -> None:
    parent_ids = [new_queue_id() for _ in range(100)]  # the parent's state is inherited
    start_r, start_w = os.pipe()
    children: dict[int, Path] = {}
    try:
        for n in range(CHILDREN):
            out = tmp_path / f"ids{n}"
            pid = os.fork()
            if pid == 0:
                os.close(start_w)
                _child(start_r, out)
            children[pid] = out
    finally:
        os.close(start_r)
        os.close(start_w)  # go
    per_child: dict[int, list[str]] = {}
    for pid, out in children.items():
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        per_child[pid] = out.read_text().split("\n")
    everything = list(parent_ids)
    for pid, ids in per_child.items():
        assert len(ids) == PER_CHILD
        assert ids == sorted(ids)
        assert len(set(ids)) == PER_CHILD
        assert all(is_queue_id(i) for i in ids)
        assert all(i.endswith("%06X" % (pid & 0xFFFFFF)) for i in ids)  # its own suffix
        everything.extend(ids)
    assert len(set(everything)) == len(everything) == 100 + CHILDREN * PER_CHILD
    # string order is time order, whichever process made the ID
    times = [queue_id_time(i) for i in sorted(everything)]
    assert times == sorted(times)


def test_the_writer_pid_is_read_back_from_an_id() -> None:
    assert queue_id_pid(new_queue_id()) == os.getpid() & 0xFFFFFF
    assert queue_id_pid("0195F3A2B7C4100A3F1") == 0x00A3F1


def test_liveness_of_running_dead_and_zombie_processes() -> None:
    assert pid_alive(os.getpid())
    assert pid_alive(1)  # init: it is there, whether we may look or not
    assert not pid_alive(0xFFFFFE)  # above any pid_max
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        deadline = time.monotonic() + 10
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)  # it exits at once; until reaped it is a zombie
        assert not pid_alive(pid)
        assert os.path.exists(f"/proc/{pid}")  # not reaped yet: a zombie, not gone
    finally:
        os.waitpid(pid, 0)
    assert not pid_alive(pid)


def test_writer_alive_asks_about_the_pid_in_the_id() -> None:
    assert writer_alive(new_queue_id())
    assert not writer_alive(new_queue_id()[:13] + "FFFFFE")
