"""kill -9 under load: of random children, and of the whole tree (issue 10).

A client sends continuously; a capture sink counts what arrives by Message-ID.  Every
message that got its 250 must arrive.  Copies may arrive twice, but only what was in
flight in a killed process (the bound is worked out below, from the code), and the relay
must never be without an smtpd worker for more than about a second (item 5: after kill -9
the throttle kept smtpd away for up to 30 s, and a client waited 15 s for its greeting).

Where duplicates come from, and what bounds them
------------------------------------------------
* smtpd killed: none.  A message is delivered only once it is committed; one committed
  whose 250 never reached the client is "delivered without 250" (counted apart: the client
  would retry it, which Load does not).
* A delivery agent killed: the queue manager hands the jobs it held out again, first in
  line (qmgr/agents.py ``give_back``).  Those it had already delivered are delivered twice:
  the transactions past their final dot and the results of its last event-loop turn,
  not yet written (delivery/agent.py ``_send_results``; results written before the kill
  still reach the queue manager).  At most the jobs it held: AGENT_WINDOW (500).
* The queue manager killed: its agents keep delivering every job they hold and drop the
  results, as nobody is left to take them; its successor finds those messages not marked
  done and delivers them again.  Done marks already handed to the remover thread survive
  (os.write: the page cache outlives the process), so only one loop turn of marks adds to
  it.  At most the jobs the agents held: delivery.workers x AGENT_WINDOW (1,000).
* The whole tree killed: like the queue manager, but the agents die with it, so nothing is
  delivered after the kill: what had been delivered and not yet marked done.

Either way a kill can only duplicate a message that was *in flight*: accepted and not yet
settled (delivered and applied).  The test measures that at each kill -- the messages
sent but not yet received by the sink, plus those the sink took in the second before
(delivered, maybe not applied) -- and asserts the duplicates stay within the sum, each
kill's share capped by the code bound above.  Measured (issue 10 note): a few to a few
dozen duplicates for 20 kills at 150 msgs/s; the tail (hundreds) comes from queue manager
kills while the agents hold a backlog (up to AGENT_WINDOW jobs each), typically after
delivery agents were killed before they were ready and throttled.  Shrinking that
in-flight window (an agent that stops starting the jobs of a queue manager that is gone,
or a successor that takes the orphaned results) is what would bound it tighter.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import pytest

from mta.qmgr.agents import AGENT_WINDOW
from tests.delivery.sink import CaptureSink
from tests.faults.master_helpers import (
    Load,
    Watch,
    kill_random_child,
    received_ids,
    restart_delays,
    wait_delivered,
)
from tests.helpers import MtaProcess, wait_until
from tests.master import children_by_kind

pytestmark = pytest.mark.timeout(150)

Factory = Callable[..., MtaProcess]
RATE = 150  # messages a second
KILLS = 20
KILL_EVERY = 0.5  # seconds
TREE_KILLS = 3
DELIVERY_WORKERS = 2
NO_SMTPD_MAX = 1.5  # seconds: "about a second" (a start-up on a loaded machine)
GREETING_MAX = 3.0  # seconds a normal client may wait for its greeting during the kills
REPLACED_WITHIN = 0.3  # seconds from the death of a ready child to its successor's start


def relay(sink: CaptureSink) -> dict[str, Any]:
    return {
        "smtp": {"workers": 2},
        "delivery": {"workers": DELIVERY_WORKERS, "relayhost": f"127.0.0.1:{sink.port}"},
        "master": {"heartbeat_timeout": 5},
    }


def complete(server: MtaProcess) -> bool:
    kinds = children_by_kind(server.pid)
    return (
        len(kinds.get("smtpd", [])) == 2
        and len(kinds.get("delivery", [])) == DELIVERY_WORKERS
        and "qmgr" in kinds
    )


class InFlight:
    """What a kill may find in flight: messages acknowledged (or being sent) but not yet
    received by the sink, plus those the sink took in the last ``seconds`` (delivered,
    maybe not yet applied)."""

    def __init__(self, load: Load, sink: CaptureSink, seconds: float = 0.5) -> None:
        self.load = load
        self.sink = sink
        self.seconds = seconds
        self._counts: list[tuple[float, int]] = []

    def mark(self) -> None:
        self._counts.append((time.monotonic(), len(self.sink.messages)))

    def now(self) -> int:
        now, received = time.monotonic(), len(self.sink.messages)
        earlier = [c for t, c in self._counts if now - t >= self.seconds]
        recent = received - (earlier[-1] if earlier else 0)
        return self.load.unsettled(received_ids(self.sink)) + recent

    def wait(self, seconds: float) -> None:
        """Let ``seconds`` pass, sampling the sink."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.mark()
            time.sleep(0.05)


def test_kill_9_of_random_children_under_load(mta_factory: Factory, sink: CaptureSink) -> None:
    server = mta_factory(relay(sink))
    wait_until(lambda: complete(server), timeout=15)
    rng = random.Random(10)
    bound = 0
    killed: list[str] = []
    with Load(server.port, RATE, tag="kill") as load, Watch(server.port, server.pid) as watch:
        in_flight = InFlight(load, sink)
        load.wait_acked(100)
        for _ in range(KILLS):
            in_flight.wait(KILL_EVERY)
            victim = kill_random_child(server.pid, rng)
            if victim is not None:
                killed.append(victim[0])
                bound += _bound(victim[0], in_flight.now())
        load.wait_acked(100)  # it still takes mail after the last kill
    result = wait_delivered(load, sink, timeout=90)
    kinds = {k: killed.count(k) for k in sorted(set(killed))}
    print(
        f"\nkill -9 x{len(killed)} {kinds} at {RATE} msgs/s: {result}; bound {bound}; "
        f"no smtpd {watch.no_smtpd_total:.2f} s (longest {watch.no_smtpd_longest:.2f} s); "
        f"{watch.greeting_summary()}; failures {dict(load.failures)}"
    )
    assert not result.lost, result.lost[:10]
    assert result.duplicates <= bound, (result, bound)
    assert watch.no_smtpd_longest <= NO_SMTPD_MAX
    assert watch.greetings and max(watch.greetings) <= GREETING_MAX, watch.greeting_summary()
    log = server.log()
    assert "Traceback" not in log  # a delivery agent whose queue manager died reconnects
    # item 5: a child that was ready is replaced at once, however young it was; only one
    # that died before it was ready waits (its start-up may be what fails)
    restarts = restart_delays(log)
    assert len(restarts) == len(killed)
    slow = [r for r in restarts if r.ready and r.delay > REPLACED_WITHIN]
    assert not slow, slow
    assert all(r.delay < 5.0 for r in restarts), restarts  # 0.5 s doubling, not 30 s


def _bound(kind: str, in_flight: int) -> int:
    """What a kill of ``kind`` may deliver twice (see the module docstring)."""
    if kind == "smtpd":
        return 0
    if kind == "delivery":
        return min(AGENT_WINDOW, in_flight)
    return min(DELIVERY_WORKERS * AGENT_WINDOW, in_flight)  # the queue manager, or all


def test_kill_9_of_the_whole_tree_under_load(mta_factory: Factory, sink: CaptureSink) -> None:
    server = mta_factory(relay(sink))
    wait_until(lambda: complete(server), timeout=15)
    bound = 0
    with Load(server.port, RATE, tag="tree") as load:
        in_flight = InFlight(load, sink)
        for _ in range(TREE_KILLS):
            load.wait_acked(100)
            in_flight.wait(2.0)
            server.kill_tree()
            bound += _bound("tree", in_flight.now())
            server.start()  # the same spool and ports: it recovers from the directories
        load.wait_acked(100)
    result = wait_delivered(load, sink, timeout=90)
    print(
        f"\nwhole tree kill -9 x{TREE_KILLS} at {RATE} msgs/s: {result}; bound {bound}; "
        f"failures {dict(load.failures)}"
    )
    assert not result.lost, result.lost[:10]
    assert result.duplicates <= bound, (result, bound)
