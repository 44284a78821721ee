"""A child killed after it was ready is replaced at once, on a real tree (issue 10 item 5).

The decisions are tested with a fake clock in test_arbiter.py; this is the same on a real
master: the queue manager, killed again and again as soon as it is ready, comes back each
time within a moment (the throttle used to hold a child that had lived less than 5 s back
for 0.5, 1, 2, ... 30 s), and the delivery agents, whose queue manager vanished under them,
reconnect without a traceback.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import tempfile
from collections.abc import Callable
from datetime import datetime
from glob import glob
from pathlib import Path
from typing import Any

import pytest
import uvloop

from mta.config import Config, QueueConfig
from mta.delivery.agent import DeliveryAgent
from mta.queue.ipc import Result, encode_frame
from tests.delivery.sink import CaptureSink
from tests.helpers import MtaProcess, wait_until
from tests.master import ClientLoop, children_by_kind

pytestmark = pytest.mark.timeout(90)

Factory = Callable[..., MtaProcess]
KILLS = 6
RESTART_MAX = 0.45  # seconds from a death to the replacement's start (the first delay: 0.5)
_LINE = r"^(\S+ \S+) mta\[\d+\] mta\.master: "
_DIED = re.compile(_LINE + r"qmgr#0\[(\d+)\] died \(signal SIGKILL\)", re.M)
_STARTED = re.compile(_LINE + r"started qmgr#0\[(\d+)\]$", re.M)


def _when(stamp: str) -> datetime:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f")


def _ready_qmgr(server: MtaProcess, old: int | None) -> int | None:
    """The queue manager's pid once a new one (not ``old``) is ready: it has beaten (its
    heartbeat file, made afresh with mtime 0 for each start, has a time)."""
    pids = children_by_kind(server.pid).get("qmgr", [])
    if len(pids) != 1 or pids[0] == old:
        return None
    beats = glob(f"{tempfile.gettempdir()}/mta-master-{server.pid}-*/qmgr-0-0.alive")
    try:
        return pids[0] if beats and os.stat(beats[0]).st_mtime > 0 else None
    except FileNotFoundError:
        return None


def test_a_queue_manager_killed_again_and_again_comes_back_at_once(
    mta_factory: Factory, sink: CaptureSink
) -> None:
    server = mta_factory({"delivery": {"workers": 2, "relayhost": f"127.0.0.1:{sink.port}"}})
    qmgr = wait_until(lambda: _ready_qmgr(server, None), timeout=15)
    with ClientLoop(server.port, threads=3) as clients:  # deliveries in flight at each kill
        for _ in range(KILLS):
            clients.wait_for(30)
            os.kill(qmgr, signal.SIGKILL)
            qmgr = wait_until(lambda old=qmgr: _ready_qmgr(server, old), timeout=10)
        clients.wait_for(30)
    wait_until(lambda: len(sink.messages) >= clients.outcomes["ok"], timeout=30)
    log = server.log()
    deaths = [_when(m.group(1)) for m in _DIED.finditer(log)]
    starts = [_when(m.group(1)) for m in _STARTED.finditer(log)][1:]
    assert len(deaths) == len(starts) == KILLS, log
    waits = [(start - death).total_seconds() for death, start in zip(deaths, starts, strict=True)]
    assert max(waits) <= RESTART_MAX, waits
    assert "before it was ready" not in log
    # the delivery agents lost their queue manager each time, reconnected (all the mail
    # arrived) and said nothing alarming about it
    assert "Traceback" not in log and "RuntimeError" not in log, log


def test_results_for_a_queue_manager_that_is_gone_are_dropped_quietly(tmp_path: Path) -> None:
    """The race behind "RuntimeError: unable to perform operation on <UnixTransport
    closed=True>": a delivery finishes after the queue manager died, before the agent's
    reader has seen the end of the connection.  Its result is dropped (the successor hands
    the job out again), and nothing is raised into the event loop."""
    config = Config(queue=QueueConfig(path=str(tmp_path / "spool")))
    agent = DeliveryAgent(config)
    errors: list[dict[str, Any]] = []

    async def scenario() -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda loop, context: errors.append(context)
        )
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        _, writer = await asyncio.open_unix_connection(sock=ours)
        agent.writer = writer
        theirs.close()  # the queue manager is killed ...
        writer.write(b"x" * 65536)  # ... and the transport finds out when it writes
        await asyncio.sleep(0.05)
        assert writer.is_closing()
        agent._results.append(encode_frame(Result(queue_id="A" * 19, results=[])))
        agent._send_results()  # what call_soon runs after a delivery finished
        await asyncio.sleep(0)
        writer.close()

    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert errors == []
