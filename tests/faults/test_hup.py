"""HUP five times under full load: no message lost, none duplicated (issue 10).

A reload replaces every child one at a time (arbiter.py): each smtpd worker drains its
sessions, the queue manager stops first and waits for the results of the jobs it handed
out, each delivery agent finishes what it holds.  Nothing is killed, so nothing may be
delivered twice, and every message that got its 250 arrives.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest

from tests.delivery.sink import CaptureSink
from tests.faults.master_helpers import Load, Watch, wait_delivered
from tests.helpers import MtaProcess, wait_until
from tests.master import children_by_kind

pytestmark = pytest.mark.timeout(150)

Factory = Callable[..., MtaProcess]
RELOADS = 5
RATE = 300  # messages a second asked for; the machine decides what it gets


def _tree(server: MtaProcess) -> set[int] | None:
    kinds = children_by_kind(server.pid)
    complete = len(kinds.get("smtpd", [])) == 2 and len(kinds.get("delivery", [])) == 2
    return {p for pids in kinds.values() for p in pids} if complete and "qmgr" in kinds else None


def _replaced(server: MtaProcess, old: set[int]) -> set[int] | None:
    """The children once every one of ``old`` has been replaced."""
    tree = _tree(server)
    return tree if tree is not None and not tree & old else None


def test_five_reloads_under_full_load_lose_and_duplicate_nothing(
    mta_factory: Factory, sink: CaptureSink
) -> None:
    server = mta_factory(
        {
            "smtp": {"workers": 2},
            "delivery": {"workers": 2, "relayhost": f"127.0.0.1:{sink.port}"},
        }
    )
    before = wait_until(lambda: _tree(server), timeout=15)
    started = time.monotonic()
    with (
        Load(server.port, RATE, threads=3, tag="hup") as load,
        Watch(server.port, server.pid) as watch,
    ):
        for _ in range(RELOADS):
            load.wait_acked(100)
            server.signal(signal.SIGHUP)
            before = wait_until(lambda old=before: _replaced(server, old), timeout=40)
        load.wait_acked(100)
    loaded = time.monotonic() - started
    result = wait_delivered(load, sink, timeout=60)
    print(
        f"\nHUP x{RELOADS} under load ({load.acked_count() / loaded:.0f} msgs/s acked over "
        f"{loaded:.1f} s): {result}; failures {dict(load.failures)}; "
        f"no smtpd {watch.no_smtpd_total:.2f} s; {watch.greeting_summary()}"
    )
    assert not result.lost, result.lost[:10]
    assert result.duplicates == 0, result
    assert result.unacked_delivered == 0, result  # a reload cuts no DATA short
    assert watch.no_smtpd_total == 0.0
    log = server.log()
    assert log.count("reloading: replacing children") == RELOADS
    assert "Traceback" not in log
    assert " died " not in log and "killing it" not in log
