"""A child's heartbeat (mta/master/children.py), with a fake clock and no child process."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from mta.master.children import Heartbeat
from tests.master.fakes import FakeClock

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
def beat_file(tmp_path: Path) -> Path:
    path = tmp_path / "smtpd-0-0.alive"
    path.write_bytes(b"")
    os.utime(path, (0, 0))  # as the master leaves it: not alive yet
    return path


def mtime(path: Path) -> float:
    return path.stat().st_mtime


def test_beats_at_most_once_per_interval(beat_file: Path) -> None:
    clock = FakeClock()
    heartbeat = Heartbeat(str(beat_file), os.getppid(), interval=0.5, clock=clock.monotonic)
    heartbeat()  # the first call beats
    assert mtime(beat_file) > 0
    os.utime(beat_file, (0, 0))
    for _ in range(3):  # the loop calls often; the file is not touched each time
        clock.advance(0.125)
        heartbeat.beat()
        assert mtime(beat_file) == 0
    clock.advance(0.125)
    heartbeat.beat()
    assert mtime(beat_file) > 0


def test_two_heartbeats_keep_their_own_time(beat_file: Path, tmp_path: Path) -> None:
    other = tmp_path / "delivery-0-0.alive"
    other.write_bytes(b"")
    os.utime(other, (0, 0))
    clock = FakeClock()
    first = Heartbeat(str(beat_file), os.getppid(), clock=clock.monotonic)
    second = Heartbeat(str(other), os.getppid(), clock=clock.monotonic)
    first()
    second()  # a beat of one does not hold back the other (no shared state)
    assert mtime(beat_file) > 0 and mtime(other) > 0


@pytest.fixture
def terms() -> Iterator[list[int]]:
    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    yield received
    signal.signal(signal.SIGTERM, previous)


def test_an_orphan_stops_itself_as_on_term(beat_file: Path, terms: list[int]) -> None:
    not_our_parent = os.getpid()  # whoever the master was, it is not our parent now
    heartbeat = Heartbeat(str(beat_file), not_our_parent, clock=FakeClock().monotonic)
    heartbeat()
    assert terms == [signal.SIGTERM]
    assert mtime(beat_file) == 0  # and it does not pretend to be supervised
