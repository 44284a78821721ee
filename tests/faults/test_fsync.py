"""Slow and failing flushes (issue 10, items 1 and 4), injected by strace into ``fdatasync``
of a real relay: nothing is delivered before it is durable, a commit that failed is never
delivered, and failures leave no segment files or queue-manager descriptors behind."""

from __future__ import annotations

import re
import smtplib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.delivery.sink import CaptureSink
from tests.faults.integrity_helpers import (
    RECIPIENT,
    SENDER,
    STRACE,
    TracedMta,
    body,
    open_fds,
    qmgr_pid,
    relay_config,
    segment_files,
    send,
)
from tests.helpers import wait_until

pytestmark = pytest.mark.skipif(STRACE is None, reason="strace is not installed (.ci/setup)")

DELAY = 2.5  # seconds each fdatasync is held up


def traced(tmp_path: Path, sink: CaptureSink, inject: str) -> Iterator[TracedMta]:
    workdir = tmp_path / "traced"
    workdir.mkdir()
    relay = TracedMta(workdir, relay_config(sink.port), inject)
    relay.start()
    try:
        yield relay
    finally:
        try:
            relay.stop(timeout=20)
        except Exception:  # noqa: BLE001  -- teardown must kill whatever is left
            relay.kill_tree()


@pytest.fixture
def slow_relay(tmp_path: Path, sink: CaptureSink) -> Iterator[TracedMta]:
    yield from traced(tmp_path, sink, f"delay_enter={int(DELAY * 1e6)}")


def test_nothing_reaches_the_next_hop_before_the_client_got_its_250(
    slow_relay: TracedMta, sink: CaptureSink
) -> None:
    acked: dict[str, Any] = {}

    def client() -> None:
        with smtplib.SMTP("127.0.0.1", slow_relay.port, timeout=30) as smtp:
            acked["refused"] = smtp.sendmail(SENDER, [RECIPIENT], body("slow"))
            acked["at"] = time.monotonic()  # the 250 after DATA is in

    sender = threading.Thread(target=client)
    started = time.monotonic()
    sender.start()
    seen_at = wait_until(lambda: time.monotonic() if sink.messages else None, timeout=DELAY * 4)
    sender.join(30)
    assert acked["refused"] == {}
    assert acked["at"] - started >= DELAY * 0.9  # the flush was held up indeed
    assert seen_at >= acked["at"] - 0.05  # delivered only once durable (50 ms: the polling)
    print(
        f"\nfdatasync +{DELAY}s: 250 after {acked['at'] - started:.2f}s, at the sink "
        f"{seen_at - acked['at']:+.2f}s after the 250"
    )


@pytest.fixture
def failing_relay(tmp_path: Path, sink: CaptureSink) -> Iterator[TracedMta]:
    yield from traced(tmp_path, sink, "error=EIO:when=1")  # the first flush of each thread


def test_a_failed_flush_is_answered_451_and_never_delivered(
    failing_relay: TracedMta, sink: CaptureSink
) -> None:
    code, _ = send(failing_relay.port, body("refused"))
    assert code == 451
    assert send(failing_relay.port, body("accepted")) == (250, b"")
    sink.wait_for(1)
    wait_until(failing_relay.queue_empty)
    assert subjects(sink) == [b"accepted"]  # the refused one, although written, never went out


FAILURES = 200


@pytest.fixture
def many_failures_relay(tmp_path: Path, sink: CaptureSink) -> Iterator[TracedMta]:
    yield from traced(tmp_path, sink, f"error=EIO:when=1..{FAILURES}")


def test_many_failed_commits_leave_no_files_or_descriptors_behind(
    many_failures_relay: TracedMta, sink: CaptureSink
) -> None:
    relay = many_failures_relay
    qmgr = qmgr_pid(relay)
    fds_before = open_fds(qmgr)
    refused = sum(send(relay.port, body(f"refused-{i}"))[0] == 451 for i in range(FAILURES))
    assert refused == FAILURES
    assert len(segment_files(relay.spool)) <= 1  # not one per failure
    for i in range(3):
        assert send(relay.port, body(f"accepted-{i}")) == (250, b"")
    sink.wait_for(3, timeout=20)  # the queue manager has looked at every segment since
    # (+4: the delivery agents may have connected after the first count, and one .done file)
    assert open_fds(qmgr) <= fds_before + 4
    assert len(segment_files(relay.spool)) <= 1
    wait_until(relay.queue_empty)
    assert subjects(sink) == [b"accepted-0", b"accepted-1", b"accepted-2"]
    print(
        f"\n{FAILURES} failed commits: {refused} x 451, 0 delivered; segment files "
        f"{len(segment_files(relay.spool))}; qmgr fds {fds_before} -> {open_fds(qmgr)}"
    )


def subjects(sink: CaptureSink) -> list[bytes]:
    found = [re.search(rb"Subject: (\S+)", m.data) for m in sink.messages]
    return sorted(m.group(1) for m in found if m is not None)
