"""The arbiter's decisions, in the test's own process (DESIGN.md §1, §10).

As gunicorn tests its arbiter: fork, kill and waitpid are replaced (:class:`FakeProcesses`)
and so is the clock (:class:`FakeClock`), and the test drives the main loop one round at a
time (:meth:`Arbiter.one_round`).  What only a real process tree shows (signals reaching a
real master, a child crashing for real, its heartbeat from a real event loop) is tested in
test_supervision.py and test_signals.py.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mta.config import load_config
from mta.exitcodes import EXIT_CONFIG
from mta.master.arbiter import _KILL_MARGIN, _SIGNALS, _TICK, Arbiter
from mta.master.http import health
from mta.master.throttle import Throttle
from tests.helpers import to_toml
from tests.master.fakes import FakeClock, FakeProcesses

pytestmark = pytest.mark.timeout(30)

GRACEFUL = 10.0
HEARTBEAT = 4.0
SETTLED = 5.0  # seconds of beating rounds: every child is long since ready
FIRST_DELAY = Throttle().first_delay  # the slot's delay after its first start-up failure
SETTINGS: dict[str, Any] = {
    "smtp": {"listen": ["127.0.0.1:0"], "workers": 2},
    "delivery": {"workers": 1},
    "metrics": {"listen": ""},
    "master": {"graceful_timeout": GRACEFUL, "heartbeat_timeout": HEARTBEAT},
    # no per-client limits, so no anvil: these tests count the other kinds' children
    # (test_anvil_is_one_exclusive_child_while_limits_are_on has it)
    "limits": {"connections": 0, "auth_failures": 0},
}
WANTED = {"qmgr": 1, "delivery": 1, "smtpd": 2}


class Tree:
    """An arbiter with fake processes and a fake clock, and what a test does with them."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.clock = FakeClock()
        self.processes = FakeProcesses(self.clock)
        self.arbiter = Arbiter(
            load_config(str(config_path)),
            str(config_path),
            clock=self.clock,
            processes=self.processes,
        )

    def round(self, after: float = _TICK) -> bool:
        """Let ``after`` seconds pass, then one round of the main loop; True when done."""
        self.clock.advance(after)
        return self.arbiter.one_round()

    def rounds(self, seconds: float) -> None:
        """Rounds for ``seconds``, every running child beating before each."""
        for _ in range(round(seconds / _TICK)):
            self.processes.beat_all()
            self.round()

    def pid(self, kind: str, slot: int = 0) -> int:
        """The pid of the (newest) child in the slot."""
        pid = self.slot_pid(kind, slot)
        assert pid is not None, f"no {kind}#{slot}"
        return pid

    def slot_pid(self, kind: str, slot: int = 0) -> int | None:
        pids = [c.pid for c in self.arbiter.children.values() if (c.kind, c.slot) == (kind, slot)]
        return max(pids, default=None)

    def running(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for pid in self.processes.running():
            kind = self.processes.children[pid].kind
            counts[kind] = counts.get(kind, 0) + 1
        return counts

    def signal(self, signum: int) -> None:
        """What the signal handler does: queue it for the next round."""
        self.arbiter.signals.append(signum)

    def close(self) -> None:
        self.arbiter._cleanup()
        os.close(self.arbiter._pipe_r)
        os.close(self.arbiter._pipe_w)


def write_config(path: Path, **changes: dict[str, Any]) -> None:
    settings = {**SETTINGS, "queue": {"path": str(path.parent / "spool")}}
    for section, values in changes.items():
        settings[section] = {**settings.get(section, {}), **values}
    path.write_text(to_toml(settings))


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Tree]:
    config_path = tmp_path / "mta.toml"
    write_config(config_path)
    tree = Tree(config_path)
    tree.round()  # the first round starts every child
    yield tree
    tree.close()


def test_the_first_round_starts_one_child_per_kind_and_slot(tree: Tree) -> None:
    assert tree.running() == WANTED
    slots = sorted((c.kind, c.slot) for c in tree.arbiter.children.values())
    assert slots == [("delivery", 0), ("qmgr", 0), ("smtpd", 0), ("smtpd", 1)]
    tree.rounds(3 * HEARTBEAT)  # beating children are left alone
    assert [e for e, _, _ in tree.processes.events] == ["spawn"] * 4


def test_a_dead_child_is_reaped_and_replaced(tree: Tree, caplog: pytest.LogCaptureFixture) -> None:
    tree.rounds(SETTLED)  # ready: no throttling
    dead = tree.pid("smtpd", 1)
    tree.processes.exit(dead, -signal.SIGKILL)
    tree.round(0.0)
    assert dead not in tree.arbiter.children
    new = tree.pid("smtpd", 1)
    assert new != dead
    assert tree.processes.events[-2:] == [("exit", "smtpd", dead), ("spawn", "smtpd", new)]
    assert tree.running() == WANTED
    assert f"smtpd#1[{dead}] died (signal SIGKILL) after" in caplog.text
    # the successor (same file: kind, slot, generation) is not alive until it beats
    assert os.stat(tree.processes.children[new].heartbeat).st_mtime == 0


def test_a_child_dying_at_start_is_throttled_not_respawned_in_a_loop(tree: Tree) -> None:
    first = tree.pid("smtpd", 0)
    delays = []
    for _ in range(5):
        pid = tree.pid("smtpd", 0)
        tree.processes.exit(pid, 1)  # dies young, each time
        died_at = tree.clock.monotonic()
        tree.round(0.0)  # SIGCHLD wakes the master at once
        while tree.slot_pid("smtpd", 0) is None:
            assert tree.clock.monotonic() - died_at < 60, "never restarted"
            tree.processes.beat_all()
            tree.round(0.125)
        delays.append(tree.clock.monotonic() - died_at)
    # 0.5 s, doubling: each restart comes at the first round after the slot's delay
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert len(tree.processes.spawned("smtpd")) == 2 + 5
    assert first not in tree.arbiter.children
    # the other slots were not held back
    assert tree.running() == WANTED


def test_a_child_that_was_ready_comes_back_at_once(tree: Tree) -> None:
    for _ in range(3):
        tree.rounds(SETTLED)
        tree.processes.exit(tree.pid("smtpd", 0), 1)
        before = len(tree.processes.spawned("smtpd"))
        tree.round(0.0)
        assert len(tree.processes.spawned("smtpd")) == before + 1


def test_a_child_killed_a_moment_after_it_was_ready_is_replaced_in_the_same_round(
    tree: Tree, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 10 item 5: a child that ran for a second and was killed is no start-up failure;
    throttling it (up to 30 s) left the relay without smtpd."""
    for _ in range(5):
        pid = tree.pid("smtpd", 0)
        tree.processes.beat(pid)
        tree.round()  # the arbiter sees it ready
        tree.clock.advance(0.25)
        tree.processes.exit(pid, -signal.SIGKILL)
        tree.round(0.0)  # SIGCHLD wakes the master
        assert tree.slot_pid("smtpd", 0) not in (None, pid)
    assert len(tree.processes.spawned("smtpd")) == 2 + 5
    assert tree.arbiter.throttle.delay(("smtpd", 0)) == 0.0
    assert "before it was ready" not in caplog.text


def test_a_child_that_beat_once_between_two_rounds_was_ready(tree: Tree) -> None:
    pid = tree.pid("qmgr")
    tree.processes.beat(pid)  # its first beat, and it is killed before the next round
    tree.processes.exit(pid, -signal.SIGKILL)
    tree.round(0.0)
    assert tree.slot_pid("qmgr") not in (None, pid)


def test_a_child_killed_before_it_was_ready_is_throttled(
    tree: Tree, caplog: pytest.LogCaptureFixture
) -> None:
    """Not ready means it may not be able to start at all: its slot waits (Postfix does the
    same for a process that dies before it served anything)."""
    pid = tree.pid("smtpd", 1)
    tree.processes.exit(pid, -signal.SIGKILL)
    tree.round(0.0)
    assert tree.slot_pid("smtpd", 1) is None
    assert f"smtpd#1[{pid}] died (signal SIGKILL) after 0.0s, before it was ready" in caplog.text
    tree.round(FIRST_DELAY)
    assert tree.slot_pid("smtpd", 1) not in (None, pid)


def test_a_ready_child_resets_the_delay_of_its_slot(tree: Tree) -> None:
    for _ in range(3):  # three start-up failures: the slot waits 0.5, 1 and 2 s
        tree.processes.exit(tree.pid("smtpd", 0), 1)
        tree.round(0.0)
        while tree.slot_pid("smtpd", 0) is None:
            tree.round(0.125)
    assert tree.arbiter.throttle.delay(("smtpd", 0)) == 4 * FIRST_DELAY
    tree.processes.beat(tree.pid("smtpd", 0))  # the fourth comes up
    tree.round()
    assert tree.arbiter.throttle.delay(("smtpd", 0)) == 0.0
    tree.processes.exit(tree.pid("smtpd", 0), 1)  # the fifth fails at start: from the top
    tree.round(0.0)
    tree.processes.exit(tree.pid("smtpd", 0), 1)
    tree.round(0.0)
    assert tree.arbiter.throttle.delay(("smtpd", 0)) == FIRST_DELAY


def test_a_crash_loop_of_ready_children_is_not_throttled(tree: Tree) -> None:
    """A child that comes up and dies every second (a client or a message that crashes it)
    is replaced at once every time: throttling it would make whoever can crash it an outage
    for everyone.  Its start-up is what bounds the rate (throttle.py)."""
    for _ in range(20):
        for pid in tree.processes.running("smtpd"):
            tree.processes.beat(pid)
        tree.round()
        tree.clock.advance(1.0 - _TICK)
        for pid in tree.processes.running("smtpd"):
            tree.processes.exit(pid, -signal.SIGSEGV)
        tree.round(0.0)
        assert len(tree.processes.running("smtpd")) == 2  # never a round without them
    assert len(tree.processes.spawned("smtpd")) == 2 + 2 * 20


def _smtpd_serving(tree: Tree) -> int:
    """smtpd children that run and are not being stopped."""
    return sum(
        1
        for c in tree.arbiter.children.values()
        if c.kind == "smtpd" and c.stopping_since is None and c.pid in tree.processes.running()
    )


def test_hup_never_leaves_a_single_smtpd_slot_without_a_worker(tmp_path: Path) -> None:
    """One smtpd worker, a reload, and its first successor fails at start: the old worker
    serves until a successor is ready, so there is always one."""
    config_path = tmp_path / "mta.toml"
    write_config(config_path, smtp={"workers": 1})
    tree = Tree(config_path)
    try:
        tree.round()
        tree.rounds(1.0)
        old = tree.pid("smtpd")
        tree.signal(signal.SIGHUP)
        failed: list[int] = []
        for _ in range(20):
            running = tree.processes.running()
            successors = [p for p in tree.processes.running("smtpd") if p != old]
            for pid in running:  # successors of smtpd do not beat: not ready yet
                if pid not in successors:
                    tree.processes.beat(pid)
            if successors and not failed:
                failed.append(successors[0])
                tree.processes.exit(successors[0], 1)
            tree.round()
            assert _smtpd_serving(tree) >= 1
            if failed and len(tree.processes.spawned("smtpd")) == 3:
                break  # a second successor started, after the first one's delay
        assert failed, "the reload never reached smtpd"
        assert ("TERM", "smtpd", old) not in tree.processes.events
        for _ in range(6):
            tree.processes.beat_all()
            tree.round()
            assert _smtpd_serving(tree) >= 1
        assert ("TERM", "smtpd", old) in tree.processes.events
        assert tree.arbiter.children[tree.pid("smtpd")].generation == 1
    finally:
        tree.close()


def test_a_configuration_error_in_a_child_stops_the_master(
    tree: Tree, caplog: pytest.LogCaptureFixture
) -> None:
    pid = tree.pid("smtpd", 0)
    tree.processes.exit(pid, EXIT_CONFIG)
    assert tree.round(0.0) is False  # the others are told to stop ...
    others = [p for p in tree.processes.children if p != pid]
    assert sorted(p for e, _, p in tree.processes.events if e == "TERM") == sorted(others)
    assert tree.round() is True  # ... and once they are gone, the master is done
    assert tree.arbiter.exit_code == EXIT_CONFIG == 78
    assert len(tree.processes.spawned("smtpd")) == 2  # never restarted
    assert f"smtpd#0[{pid}] exited with a configuration error" in caplog.text


def test_a_configuration_error_after_serving_restarts_the_slot_and_keeps_serving(
    tree: Tree, caplog: pytest.LogCaptureFixture
) -> None:
    """A table edited badly on disk while the relay runs must not take it down: the worker
    that trips on it is restarted as a start-up failure (throttled), the others serve."""
    tree.rounds(SETTLED)  # every kind has served
    pid = tree.pid("smtpd", 1)
    tree.processes.exit(pid, EXIT_CONFIG)
    died_at = tree.clock.monotonic()
    tree.round(0.0)
    assert tree.arbiter.exit_code == 0
    assert not [e for e in tree.processes.events if e[0] == "TERM"]  # nobody told to stop
    while tree.slot_pid("smtpd", 1) is None:
        assert tree.clock.monotonic() - died_at < 60, "never restarted"
        tree.processes.beat_all()
        tree.round(0.125)
    assert tree.clock.monotonic() - died_at == 0.5  # throttled as a start-up failure
    assert tree.running() == WANTED
    assert f"smtpd#1[{pid}] exited with a configuration error" in caplog.text
    assert "the others keep serving" in caplog.text


@pytest.fixture
def restore_signals() -> Iterator[None]:
    """run() installs the master's signal handlers: put pytest's back afterwards."""
    saved = {signum: signal.getsignal(signum) for signum in _SIGNALS}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_run_returns_78_when_a_child_has_a_configuration_error(
    tmp_path: Path, restore_signals: None, caplog: pytest.LogCaptureFixture
) -> None:
    config_path = tmp_path / "mta.toml"
    write_config(config_path)
    tree = Tree(config_path)
    arbiter, processes = tree.arbiter, tree.processes

    def smtpd_cannot_work(kind: str, pid: int) -> None:
        if kind == "smtpd":
            processes.exit(pid, EXIT_CONFIG)

    caplog.set_level(logging.INFO, "mta.master")
    processes.on_spawn = smtpd_cannot_work
    processes.on_exit = lambda: os.write(arbiter._pipe_w, b"!")  # SIGCHLD wakes the loop
    try:
        assert arbiter.run() == EXIT_CONFIG
    finally:
        os.close(arbiter._pipe_r)
        os.close(arbiter._pipe_w)
    assert len(processes.spawned("smtpd")) == 2  # the first round started both; no more
    assert processes.running() == []
    assert not os.path.exists(arbiter.run_dir)  # cleaned up
    assert "master exiting with status 78" in caplog.text


def test_term_drains_then_kills_what_is_left_after_the_graceful_timeout(tree: Tree) -> None:
    stubborn = tree.pid("delivery")
    tree.processes.children[stubborn].stubborn = True  # busy with a long delivery
    sockets = list(tree.arbiter.sockets)
    tree.signal(signal.SIGTERM)
    assert tree.round() is False
    terms = [p for e, _, p in tree.processes.events if e == "TERM"]
    assert sorted(terms) == sorted(tree.processes.children)  # every child, at once
    assert all(s.fileno() == -1 for s in sockets)  # new clients are refused from now on
    # the others drained; the stubborn one gets until the graceful timeout (plus a margin)
    stopping_since = tree.arbiter.stopping_since
    assert stopping_since is not None
    deadline = stopping_since + GRACEFUL + _KILL_MARGIN
    while tree.clock.monotonic() + _TICK <= deadline:
        assert tree.round() is False
        assert tree.running() == {"delivery": 1}
        assert ("KILL", "delivery", stubborn) not in tree.processes.events
    assert tree.round() is False  # past the deadline: KILL
    assert ("KILL", "delivery", stubborn) in tree.processes.events
    assert tree.round() is True
    assert tree.arbiter.exit_code == 0
    assert len(tree.processes.spawned("smtpd")) == 2  # draining children are not replaced


def test_int_is_term(tree: Tree) -> None:
    tree.signal(signal.SIGINT)
    tree.round()
    assert tree.round() is True
    assert tree.arbiter.exit_code == 0


def test_hup_replaces_children_one_at_a_time_qmgr_stopped_first(tree: Tree) -> None:
    old = {c.pid: (c.kind, c.slot) for c in tree.arbiter.children.values()}
    write_config(tree.config_path, smtp={"max_message_size": 1_234_567})
    tree.signal(signal.SIGHUP)
    most: dict[str, int] = {}
    for _ in range(40):
        tree.processes.beat_all()
        tree.round()
        for kind, n in tree.running().items():
            most[kind] = max(most.get(kind, 0), n)
    assert tree.arbiter.generation == 1
    assert tree.arbiter.config.smtp.max_message_size == 1_234_567
    children = tree.arbiter.children.values()
    assert sorted((c.kind, c.slot, c.generation) for c in children) == [
        ("delivery", 0, 1),
        ("qmgr", 0, 1),
        ("smtpd", 0, 1),
        ("smtpd", 1, 1),
    ]
    assert all(p not in old for p in tree.arbiter.children)
    new_config = [tree.processes.children[p].config for p in tree.arbiter.children]
    assert all(c.smtp.max_message_size == 1_234_567 for c in new_config)
    # never two queue managers; never more than one extra child of the others
    assert most == {"qmgr": 1, "delivery": 2, "smtpd": 3}
    events = tree.processes.events
    [old_qmgr] = [p for p, (kind, _) in old.items() if kind == "qmgr"]
    new_qmgr = tree.pid("qmgr")
    assert events.index(("exit", "qmgr", old_qmgr)) < events.index(("spawn", "qmgr", new_qmgr))
    for pid, (kind, slot) in old.items():
        if kind != "qmgr":  # the new one starts (and beats) before the old one is told
            assert events.index(("spawn", kind, tree.pid(kind, slot))) < events.index(
                ("TERM", kind, pid)
            )
    # one at a time: each old child has exited before the next replacement starts
    order = [(e, pid) for e, _, pid in events[4:] if e in ("spawn", "exit")]
    assert [e for e, _ in order] == ["exit", "spawn"] + ["spawn", "exit"] * 3
    assert not any(e == "KILL" for e, _, _ in events)


def test_hup_waits_for_the_new_child_to_beat_before_stopping_the_old(tree: Tree) -> None:
    old_delivery = tree.pid("delivery")  # (the same file: a reload still replaces all)
    tree.signal(signal.SIGHUP)
    tree.processes.beat_all()
    tree.round()  # the old qmgr is told to stop
    tree.round()  # it is gone, a new one starts; a new delivery#0 starts beside the old
    [new_delivery] = [p for p in tree.processes.running("delivery") if p != old_delivery]
    for _ in range(3):  # the new one has not beaten yet: the old one keeps working
        tree.processes.beat(old_delivery)
        tree.round()
        assert ("TERM", "delivery", old_delivery) not in tree.processes.events
    tree.processes.beat(new_delivery)
    tree.round()
    assert ("TERM", "delivery", old_delivery) in tree.processes.events


def test_hup_kills_a_replaced_child_that_does_not_stop(tree: Tree) -> None:
    old_qmgr = tree.pid("qmgr")
    tree.processes.children[old_qmgr].stubborn = True
    write_config(tree.config_path, smtp={"max_message_size": 1000})
    tree.signal(signal.SIGHUP)
    tree.round()
    assert ("TERM", "qmgr", old_qmgr) in tree.processes.events
    tree.rounds(GRACEFUL + _KILL_MARGIN)
    assert ("KILL", "qmgr", old_qmgr) not in tree.processes.events
    assert tree.processes.spawned("qmgr") == [old_qmgr]  # the exclusive kind waits
    tree.rounds(2 * _TICK)
    assert ("KILL", "qmgr", old_qmgr) in tree.processes.events
    tree.rounds(_TICK)
    assert len(tree.processes.spawned("qmgr")) == 2


@pytest.mark.parametrize(
    "text",
    ["[smtp\nworkers = 3\n", "[smtp]\nworkers = -1\n", "[smtp]\nno_such_key = 1\n"],
    ids=["toml", "value", "unknown-key"],
)
def test_an_invalid_config_on_hup_keeps_the_running_one(
    tree: Tree, text: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = tree.arbiter.config
    tree.config_path.write_text(text)
    tree.signal(signal.SIGHUP)
    tree.rounds(3 * HEARTBEAT)
    assert tree.arbiter.config is config
    assert tree.arbiter.generation == 0
    assert [e for e, _, _ in tree.processes.events] == ["spawn"] * 4
    [record] = [r for r in caplog.records if "reload failed" in r.getMessage()]
    assert record.levelno == logging.ERROR
    assert "keeping the running configuration" in record.getMessage()


def test_hup_keeps_the_listen_addresses(tree: Tree, caplog: pytest.LogCaptureFixture) -> None:
    write_config(tree.config_path, smtp={"listen": ["127.0.0.1:1"], "max_message_size": 1000})
    tree.signal(signal.SIGHUP)
    tree.round()
    assert tree.arbiter.config.smtp.listen == ("127.0.0.1:0",)
    assert tree.arbiter.config.smtp.max_message_size == 1000
    assert "the listening addresses and smtp.reuse_port need a restart" in caplog.text


def test_a_child_whose_heartbeat_goes_stale_is_killed_and_replaced(
    tree: Tree, caplog: pytest.LogCaptureFixture
) -> None:
    tree.rounds(SETTLED)
    wedged = tree.pid("smtpd", 1)
    tree.processes.beat(wedged)  # its last
    last_beat = tree.clock.monotonic()
    while ("KILL", "smtpd", wedged) not in tree.processes.events:
        assert tree.clock.monotonic() - last_beat < 10 * HEARTBEAT, "never killed"
        for pid in tree.processes.running():
            if pid != wedged:
                tree.processes.beat(pid)
        tree.round()
    # killed at the first round after the heartbeat timeout, not before
    assert HEARTBEAT < tree.clock.monotonic() - last_beat <= HEARTBEAT + _TICK
    assert [e for e, _, _ in tree.processes.events].count("KILL") == 1
    tree.round()
    assert tree.pid("smtpd", 1) != wedged
    assert tree.running() == WANTED
    assert f"smtpd#1[{wedged}] stopped heart-beating" in caplog.text


def test_a_child_that_never_beats_is_killed_a_timeout_after_its_start(tree: Tree) -> None:
    started = tree.clock.monotonic()
    while not any(e == "KILL" for e, _, _ in tree.processes.events):
        assert tree.clock.monotonic() - started < 10 * HEARTBEAT, "never killed"
        tree.round()
    assert HEARTBEAT < tree.clock.monotonic() - started <= HEARTBEAT + _TICK
    killed = [pid for e, _, pid in tree.processes.events if e == "KILL"]
    assert sorted(killed) == sorted(tree.processes.children)  # none of them ever beat


def test_health_follows_the_smtpd_heartbeats(tree: Tree) -> None:
    """What /healthz answers (mta/master/http.py), read from the arbiter's own view."""
    (Path(tree.arbiter.config.queue.path) / "tmp").mkdir(parents=True)
    assert health(tree.arbiter) == (False, "no smtpd worker is alive")  # none beat yet
    tree.processes.beat_all()
    assert health(tree.arbiter) == (True, "ok: 2 smtpd workers alive")
    tree.clock.advance(HEARTBEAT)
    tree.processes.beat(tree.pid("smtpd", 0))
    tree.clock.advance(_TICK)  # smtpd#1 last beat more than the heartbeat timeout ago
    assert health(tree.arbiter) == (True, "ok: 1 smtpd workers alive")


def test_anvil_is_one_exclusive_child_while_limits_are_on(tmp_path: Path) -> None:
    config_path = tmp_path / "mta.toml"
    write_config(config_path, limits={"connections": 10})
    tree = Tree(config_path)
    try:
        tree.round()
        assert tree.running() == {**WANTED, "anvil": 1}
        tree.rounds(SETTLED)
        old = tree.pid("anvil")
        tree.processes.exit(old, -9)  # killed: replaced at once
        tree.rounds(1.0)
        new = tree.pid("anvil")
        assert new != old
        write_config(config_path, limits={"connections": 20})
        tree.signal(signal.SIGHUP)
        tree.rounds(SETTLED * 4)
        events = tree.processes.events
        newest = tree.pid("anvil")
        # one anvil at a time (it holds the socket): the old one exits before the next starts
        assert events.index(("exit", "anvil", new)) < events.index(("spawn", "anvil", newest))
        write_config(config_path, limits={"connections": 0, "auth_failures": 0})
        tree.signal(signal.SIGHUP)
        tree.rounds(SETTLED * 4)
        assert "anvil" not in tree.running()  # no limit on: no anvil
    finally:
        tree.close()
