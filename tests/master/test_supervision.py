"""Supervision by the master (DESIGN.md §1): children are replaced, never spun, never orphaned.

Every test runs ``mta serve`` for real; children are told apart by the name each one gives
itself in ``/proc/PID/comm`` (``mta: smtpd``, ``mta: qmgr``, ``mta: delivery``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from tests.delivery.sink import CaptureSink
from tests.helpers import MtaProcess, wait_until
from tests.master import (
    ClientLoop,
    children_by_kind,
    ehlo_size,
    gone,
    port_accepts,
    scrape,
    send_messages,
)

pytestmark = pytest.mark.timeout(120)

Factory = Callable[..., MtaProcess]
_MASTER_LINE = r"^(\S+ \S+) mta\[\d+\] mta\.master: "
_STARTED = re.compile(_MASTER_LINE + r"started smtpd#0\[\d+\]$", re.M)
_DIED = re.compile(_MASTER_LINE + r"smtpd#0\[\d+\] died \(exit status 1\)", re.M)


def _when(match: re.Match[str]) -> datetime:
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")


def relay_to(sink: CaptureSink) -> dict[str, str]:
    return {"relayhost": f"127.0.0.1:{sink.port}"}


def smtpd_replaced(server: MtaProcess, old: set[int], count: int) -> set[int] | None:
    """The smtpd pids once there are ``count`` again and none of them is in ``old``."""
    now = set(children_by_kind(server.pid).get("smtpd", []))
    return now if len(now) == count and not now & old else None


def test_one_process_per_kind_and_slot(mta_factory: Factory) -> None:
    server = mta_factory({"smtp": {"workers": 3}, "delivery": {"workers": 2}})
    kinds = wait_until(lambda: _complete(children_by_kind(server.pid), 3), timeout=10)
    assert {kind: len(pids) for kind, pids in kinds.items()} == {
        "smtpd": 3,
        "qmgr": 1,
        "delivery": 2,
        "anvil": 1,  # the per-client counters of the node ([limits] is on by default)
    }
    log = server.log()
    for slot in range(3):
        assert f"started smtpd#{slot}[" in log


def _nice(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[16])  # field 19 of proc(5)


@pytest.mark.parametrize("nice", [None, 0, 7])
def test_queue_manager_and_delivery_run_nicer_than_smtpd(
    mta_factory: Factory, nice: int | None
) -> None:
    delivery = {"workers": 2} if nice is None else {"workers": 2, "nice": nice}
    server = mta_factory({"smtp": {"workers": 2}, "delivery": delivery})
    wait_until(lambda: _complete(children_by_kind(server.pid), 2), timeout=10)
    wait_until(lambda: len(children_by_kind(server.pid).get("delivery", [])) == 2, timeout=10)
    kinds = children_by_kind(server.pid)
    base = _nice(server.pid)
    expected = 10 if nice is None else nice  # the default: 10
    assert [_nice(pid) for pid in kinds["smtpd"]] == [base, base]
    assert _nice(kinds["qmgr"][0]) == base + expected
    assert [_nice(pid) for pid in kinds["delivery"]] == [base + expected] * 2


def _complete(kinds: dict[str, list[int]], smtpd: int) -> dict[str, list[int]] | None:
    return kinds if len(kinds.get("smtpd", [])) == smtpd and "qmgr" in kinds else None


def test_killed_and_wedged_smtpd_are_replaced_while_clients_send(
    mta_factory: Factory, sink: CaptureSink
) -> None:
    server = mta_factory(
        {
            "smtp": {"workers": 3},
            "delivery": relay_to(sink),
            "master": {"heartbeat_timeout": 2},
        }
    )
    smtpd = set(wait_until(lambda: smtpd_replaced(server, set(), 3), timeout=10))
    with ClientLoop(server.port) as clients:
        clients.wait_for(20)

        # kill -9: the master reaps it and starts another; the shared socket never closes
        victim = min(smtpd)
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: smtpd_replaced(server, {victim}, 3), timeout=5)
        clients.wait_for(20)

        # kill -STOP: alive but wedged; it stops beating and is killed within the timeout
        smtpd = set(children_by_kind(server.pid)["smtpd"])
        wedged = min(smtpd)
        os.kill(wedged, signal.SIGSTOP)
        stopped_at = time.monotonic()
        wait_until(lambda: smtpd_replaced(server, {wedged}, 3), timeout=8)
        replaced_after = time.monotonic() - stopped_at
        assert gone(wedged)
        clients.wait_for(20)
        outcomes = clients.stop()

    # Only sessions that were inside the killed worker can fail (one per client thread,
    # at most, for each of the two kills); nobody is ever refused.
    assert outcomes["refused"] == 0, outcomes
    assert outcomes["failed"] + outcomes["421"] <= 4, (outcomes, clients.errors)
    # heartbeat_timeout (2 s) + the master's round (0.5 s) + a restart, with some slack
    assert replaced_after < 2 + 0.5 + 2.5
    log = server.log()
    assert re.search(rf"smtpd#\d\[{victim}\] died \(signal SIGKILL\)", log)
    assert re.search(rf"smtpd#\d\[{wedged}\] stopped heart-beating", log)
    restarts = scrape(server.metrics_port).value("mta_master_child_restarts_total", kind="smtpd")
    assert restarts == 2


def listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on 127.0.0.1:``port`` (from /proc/net/tcp)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A":  # 0A: LISTEN
            inodes.add(fields[9])
    return inodes


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


@pytest.mark.parametrize("reuse_port", [False, True], ids=["shared", "reuse_port"])
def test_listening_sockets(mta_factory: Factory, reuse_port: bool) -> None:
    """Shared: one socket, held by the master and every smtpd.  reuse_port: one per smtpd."""
    server = mta_factory({"smtp": {"workers": 2, "reuse_port": reuse_port}})
    kinds = wait_until(lambda: _complete(children_by_kind(server.pid), 2), timeout=10)
    wait_until(lambda: len(listening_inodes(server.port)) == (2 if reuse_port else 1), 10)
    listening = listening_inodes(server.port)
    owners = {pid: socket_inodes(pid) & listening for pid in [server.pid, *kinds["smtpd"]]}
    others = [pid for kind in ("qmgr", "delivery") for pid in kinds[kind]]
    # (they close their inherited copy once started; wait for the youngest to get there)
    wait_until(lambda: all(not socket_inodes(pid) & listening for pid in others), 10)
    if reuse_port:
        assert not owners[server.pid]
        assert [len(owners[pid]) for pid in kinds["smtpd"]] == [1, 1]
        assert owners[kinds["smtpd"][0]] != owners[kinds["smtpd"][1]]
    else:
        assert len(listening) == 1
        assert all(inodes == listening for inodes in owners.values())
    send_messages(server.port, 30)
    queued_by = set(re.findall(r"mta\[(\d+)\] mta\.smtpd: \w+: from=", server.log()))
    assert queued_by == {str(pid) for pid in kinds["smtpd"]}  # both workers take connections


def test_child_failing_at_start_is_throttled(mta_factory: Factory, tmp_path: Path) -> None:
    # A damaged spool: a file where a state directory should be.  (A spool that cannot be
    # made at all stops the master with EX_CONFIG before any child: test_preflight.py.)
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "tmp").write_text("a regular file: the children's tmp/ cannot be made\n")
    server = mta_factory({"queue": {"path": str(spool)}}, wait=False)
    # the first start and two respawns, 0.5 s and then 1 s after each death (the delay
    # doubles; tests/master/test_arbiter.py checks the whole series with a fake clock)
    log = wait_until(lambda: len(_STARTED.findall(text := server.log())) >= 3 and text, 15)

    starts = [_when(m) for m in _STARTED.finditer(log)]
    deaths = [_when(m) for m in _DIED.finditer(log)]
    # Each respawn waits for the slot's delay (0.5 s, doubling) after the death, plus up to
    # one round of the master (0.5 s), plus slack for a loaded machine.
    for n, (died, restarted) in enumerate(zip(deaths, starts[1:], strict=False)):
        waited = (restarted - died).total_seconds()
        delay = 0.5 * 2**n
        assert delay - 0.05 <= waited <= delay + 0.5 + 1.0, (n, waited, log)
    assert "smtpd failed: [Errno 17] File exists" in log
    assert len(deaths) >= len(starts) - 1
    assert server.proc is not None and server.proc.poll() is None  # the master keeps going
    assert scrape(server.metrics_port).value(
        "mta_master_child_restarts_total", kind="smtpd"
    ) >= len(deaths)


def test_child_configuration_error_stops_the_master(
    mta_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MTA_PARSER", "bogus")  # no such parser backend: smtpd cannot work
    server = mta_factory(wait=False)
    assert server.proc is not None
    assert server.proc.wait(30) == 78  # EX_CONFIG, instead of a restart loop
    log = server.log()
    assert "configuration error: parser backend (MTA_PARSER)" in log
    assert "'bogus'" in log
    assert re.search(r"smtpd#0\[\d+\] exited with a configuration error", log)
    assert log.count("started smtpd#0") == 1
    assert "master exiting with status 78" in log
    assert not port_accepts(server.port)


def test_children_of_a_killed_master_exit(mta_factory: Factory) -> None:
    server = mta_factory()
    kinds = wait_until(lambda: _complete(children_by_kind(server.pid), 1), timeout=10)
    children = [pid for pids in kinds.values() for pid in pids]
    assert server.proc is not None
    server.proc.kill()
    server.proc.wait(10)
    # orphans notice at their next heartbeat and drain as on TERM
    wait_until(lambda: all(gone(pid) for pid in children), timeout=15)
    assert not port_accepts(server.port)  # nobody serves without supervision
    with socket.socket() as s:  # and nobody still holds the master's metrics port
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", server.metrics_port))


def test_pidfile_written_and_removed(mta_factory: Factory, tmp_path: Path) -> None:
    pidfile = tmp_path / "run" / "mta.pid"
    pidfile.parent.mkdir()
    server = mta_factory({"master": {"pidfile": str(pidfile), "graceful_timeout": 10}})
    assert pidfile.read_text() == f"{server.pid}\n"
    assert server.stop() == 0
    assert not pidfile.exists()


def test_json_log_lines(mta_factory: Factory, sink: CaptureSink) -> None:
    server = mta_factory(
        {"log": {"format": "json"}, "smtp": {"workers": 2}, "delivery": relay_to(sink)}
    )
    send_messages(server.port, 3)
    sink.wait_for(3)
    # a reload that fails (an error line), one that works (every child replaced) ...
    config = server.config
    server.config_path.write_text("[smtp\n")
    server.signal(signal.SIGHUP)
    wait_until(lambda: "reload failed" in server.log(), timeout=10)
    server.write_config({**config, "smtp": {**config["smtp"], "max_message_size": 777_777}})
    server.signal(signal.SIGHUP)
    wait_until(lambda: ehlo_size(server.port) == 777_777, timeout=20)
    # ... and a stop
    assert server.stop() == 0

    lines = server.log_path.read_text().splitlines()
    entries = []
    for line in lines:
        entry = json.loads(line)  # every line is one JSON object
        assert isinstance(entry, dict), line
        assert {
            "time",
            "host",
            "program",
            "process",
            "level",
            "logger",
            "pid",
            "text",
        } <= entry.keys(), line
        entries.append(entry)
    messages = [e["text"] for e in entries]
    assert any(m.startswith("master started") for m in messages)
    assert any(m.startswith("reload failed") for m in messages)
    assert any(m.startswith("started smtpd#1") for m in messages)
    assert any(e["logger"] == "mta.smtpd" and "(queued)" in e["text"] for e in entries)
    assert any(e["logger"] == "mta.delivery" and "status=sent" in e["text"] for e in entries)
    # real fields, not one string (mta/logs.py): the delivery line's and smtpd's client=
    sent = next(e for e in entries if e.get("status") == "sent")
    assert sent["process"] == "smtp" and sent["dsn"] == "2.0.0" and sent["queue_id"], sent
    assert {"to", "relay", "delay", "delays"} <= sent.keys(), sent
    received = next(e for e in entries if e["text"].endswith(": client=unknown[127.0.0.1]"))
    assert received["queue_id"] == sent["queue_id"] and received["client"] == "127.0.0.1"
    assert messages[-1] == "master exiting with status 0"
    assert {e["pid"] for e in entries} > {server.pid}  # children log the same way
    assert next(e for e in entries if e["text"].startswith("reload failed"))["level"] == ("error")


def test_metrics_port_in_use_is_reported(mta_factory: Factory) -> None:
    """The master's first act: a clear error and exit status 1, no traceback, no children."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = mta_factory({"metrics": {"listen": f"127.0.0.1:{port}"}}, wait=False)
        assert server.proc is not None
        code = server.proc.wait(20)
    log = server.log()
    assert code == 1, log
    assert "Traceback" not in log, log
    assert f"127.0.0.1:{port}" in log
    assert "started" not in log
