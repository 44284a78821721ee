"""The master process: binds the listeners, forks the children and keeps them running.

Like gunicorn's arbiter and Postfix's master it runs no event loop.  Signal handlers only
append the signal to a queue and poke a self-pipe; the main loop wakes, dispatches each one
to ``handle_<name>`` and then does its rounds: reap children, kill the ones whose heartbeat
went stale, start what is missing (throttled for children that die before they are ready)
and advance a rolling reload.

* TERM/INT: children get SIGTERM and drain (sessions and deliveries in flight finish) for up
  to ``master.graceful_timeout`` seconds; whatever is left then gets SIGKILL; exit 0.
* HUP: read the configuration again, with the tables it names (access, recipients, AUTH)
  and the listeners' certificates, which the new smtpd workers load.  If anything is
  invalid, log why and keep the old one; otherwise replace children one at a time: the new
  one starts, and the old one is told to stop only once the new one has proven it is alive,
  so the service keeps answering.  An exclusive kind (the queue manager) is the exception:
  the old one stops first, since two would race over the queue.  A child that does not
  stop within the graceful timeout (plus a margin) is killed, so a reload cannot hang on it.
* A child exiting with :data:`EXIT_CONFIG` stops the master with that child's message while
  its kind has not served yet (the start failed: restarting would fail the same way).  Once
  a child of that kind has been ready, the configuration was checked and worked; a file it
  names was broken on disk since (a table or key edited in place), so the running children
  keep serving and the slot is restarted as a start-up failure (throttled, logged), until
  the file is fixed — a bad edit must not take a serving relay down (Postfix's master
  throttles a daemon that keeps failing, and does not stop).
* Under systemd (``Type=notify``) the master reports READY=1 once every wanted child is
  ready, RELOADING=1 on HUP and READY=1 when the new generation is, STOPPING=1 on TERM
  (sd_notify.py).  Before any of it, every configuration problem it can find is logged and
  the master exits with EXIT_CONFIG (preflight.py).
* A child is *ready* once it has beaten (each kind beats only after it has set up).  One
  that dies before that is a start-up failure and its slot is throttled; one that dies
  after is replaced at once (throttle.py says why, and why a crash loop of ready children
  is not throttled).  So killing a child costs its slot one start-up, never a delay.

Listening sockets are bound here, once, and inherited by every smtpd worker.  The default is
one shared (inherited) socket: with uvloop's accept loop it balanced connections across
workers as well as SO_REUSEPORT did in our measurements (see the issue note), and unlike
SO_REUSEPORT it never strands queued connections in the accept queue of a worker that died.
``smtp.reuse_port = true`` gives each worker its own socket instead, bound by the worker
(children.py); the master then binds each address only to check it can be had, and closes
it, since a listening socket of its own would take a share of the connections and never
accept them.  The listening addresses (``smtp.listen``, ``[listeners]``) and
``smtp.reuse_port`` keep their values across a HUP.

What the arbiter asks of the system goes through two small seams, so that tests can run it
in their own process, one round at a time (tests/master/test_arbiter.py): a ``clock``
(:class:`SystemClock`: monotonic time for ages and delays, wall time to compare with a
heartbeat file's mtime) and ``processes`` (:class:`SystemProcesses`: spawn, kill, reap).
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import select
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import msgspec

from mta.config import Config, ConfigError, load_config
from mta.exitcodes import EXIT_CONFIG
from mta.master import metrics_dir, preflight, privileges, sd_notify, tempdirs
from mta.master.children import KINDS, set_title, spawn
from mta.master.privileges import Account, PrivilegeError
from mta.master.throttle import Throttle
from mta.server.listen import bind_listeners

if TYPE_CHECKING:
    import socket
    from http.server import ThreadingHTTPServer

__all__ = ["Arbiter", "Clock", "Processes", "SystemClock", "SystemProcesses", "run_master"]

log = logging.getLogger("mta.master")

_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
_TICK = 0.5  # seconds between rounds when nothing happens
_KILL_MARGIN = 2.0  # seconds past the graceful timeout before a draining child is killed


class Clock(Protocol):
    def monotonic(self) -> float: ...
    def time(self) -> float: ...


class Processes(Protocol):
    def spawn(
        self,
        kind: str,
        config: Config,
        sockets: list[socket.socket],
        heartbeat: str,
        close_fds: list[int],
        slot: int = 0,
    ) -> int: ...
    def kill(self, pid: int, signum: int) -> None: ...
    def reap(self) -> Iterator[tuple[int, int]]: ...


class SystemClock:
    """The real clocks: monotonic for ages and delays, wall time to compare with mtimes."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()


class SystemProcesses:
    """How the arbiter starts, signals and reaps its children: the real system calls.
    The children run as ``account`` (None: as the master; privileges.py)."""

    def __init__(self, account: Account | None = None) -> None:
        self.account = account

    def spawn(
        self,
        kind: str,
        config: Config,
        sockets: list[socket.socket],
        heartbeat: str,
        close_fds: list[int],
        slot: int = 0,
    ) -> int:
        """Fork a child of ``kind`` (:func:`mta.master.children.spawn`); its pid."""
        return spawn(kind, config, sockets, heartbeat, close_fds, self.account, slot)

    def kill(self, pid: int, signum: int) -> None:
        """Send ``signum`` to ``pid``; one that is already gone is no error."""
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    def reap(self) -> Iterator[tuple[int, int]]:
        """(pid, exit code) of each child that has exited, without blocking; the code is
        ``os.waitstatus_to_exitcode``'s (negative: killed by that signal)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            yield pid, os.waitstatus_to_exitcode(status)


@dataclass(eq=False)
class Child:
    kind: str
    slot: int
    pid: int
    generation: int
    heartbeat: str  # file the child touches from its event loop
    started: float  # monotonic time
    stopping_since: float | None = None
    ready: bool = False  # it has beaten once: set up and working (throttle.py)

    @property
    def name(self) -> str:
        return f"{self.kind}#{self.slot}[{self.pid}]"

    def alive_since(self) -> float:
        """When the child last proved it is alive (its heartbeat file's mtime)."""
        try:
            return os.stat(self.heartbeat).st_mtime
        except FileNotFoundError:
            return 0.0

    def check_ready(self) -> bool:
        """Whether it is ready: it has beaten at least once (the file starts at mtime 0)."""
        if not self.ready:
            self.ready = self.alive_since() > 0
        return self.ready


class Arbiter:
    def __init__(
        self,
        config: Config,
        config_path: str | None,
        *,
        clock: Clock | None = None,
        processes: Processes | None = None,
        account: Account | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.clock = clock or SystemClock()
        self.account = account  # the children's (privileges.py); None: the master's own
        self.processes = processes or SystemProcesses(account)
        self.generation = 0
        self.children: dict[int, Child] = {}
        self.signals: list[int] = []
        self.stopping_since: float | None = None
        self.exit_code = 0
        self.served: set[str] = set()  # kinds of which a child has been ready (_child_exited)
        self.announced = False  # READY=1 sent to systemd for the current generation
        tempdirs.remove_stale("master")
        self.run_dir = tempdirs.create("master")  # heartbeat files: see _start
        privileges.give(self.run_dir, account, 0o710, group_only=True)
        self.throttle = Throttle(clock=self.clock.monotonic)
        self.sockets = bind_listeners(config.listen_addresses(), config.smtp.reuse_port)
        if config.smtp.reuse_port:  # each smtpd binds its own (see the module docstring)
            for sock in self.sockets:
                sock.close()
            self.sockets = []
        self._pipe_r, self._pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.http: ThreadingHTTPServer | None = None

    # ----- main loop ----------------------------------------------------------------------

    def run(self) -> int:
        from mta.master import http

        self._install_signals()
        self._write_pidfile()
        try:
            self.http = http.start(self)
        except OSError as exc:
            log.error("cannot serve metrics on %s: %s", self.config.metrics.listen, exc.strerror)
            self._cleanup()
            return 1
        log.info("master started (pid %d), listening on %s", os.getpid(), self._listen_names())
        try:
            self._start_missing()  # at once: the first tick would only delay the service
            done = False
            while not done:
                self._wait()
                done = self.one_round()
        finally:
            self._cleanup()
        log.info("master exiting with status %d", self.exit_code)
        return self.exit_code

    def one_round(self) -> bool:
        """Act on the signals received, then reap, check and start children; True once
        the master is stopping and every child is gone."""
        self._dispatch_signals()
        self._reap()
        if self.stopping_since is not None:
            if not self.children:
                return True
            self._escalate_stop()
            return False
        self._check_heartbeats()
        self._start_missing()
        self._advance_reload()
        self._announce_ready()
        return False

    def _announce_ready(self) -> None:
        """READY=1 to systemd (sd_notify.py) once, per generation, every wanted slot has a
        ready child of that generation and no outdated one is left: the listeners were
        bound before, so the service answers from now on."""
        if self.announced:
            return
        current = {
            (c.kind, c.slot)
            for c in self.children.values()
            if c.generation == self.generation and c.ready
        }
        if any(c.generation < self.generation for c in self.children.values()):
            return
        if not set(self.wanted()) <= current:
            return
        self.announced = True
        what = "reloaded" if self.generation else "ready"
        status = f"{what}: {len(current)} children, listening on {self._listen_names()}"
        sd_notify.notify("READY=1", f"STATUS={status}")

    def _wait(self) -> None:
        try:
            select.select([self._pipe_r], [], [], _TICK)
        except InterruptedError:
            pass
        try:
            while os.read(self._pipe_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _install_signals(self) -> None:
        def record(signum: int, frame: object) -> None:
            self.signals.append(signum)
            try:
                os.write(self._pipe_w, b"!")
            except BlockingIOError:
                pass

        for signum in _SIGNALS:
            signal.signal(signum, record)

    def _dispatch_signals(self) -> None:
        while self.signals:
            signum = self.signals.pop(0)
            name = signal.Signals(signum).name.removeprefix("SIG").lower()
            getattr(self, f"handle_{name}")()

    # ----- signal handlers (run from the main loop, never from the signal frame) ---------

    def handle_term(self) -> None:
        if self.stopping_since is None:
            log.info("stopping: draining children for up to %ss", self._graceful())
            sd_notify.notify("STOPPING=1", "STATUS=stopping: draining the children")
            self.stopping_since = self.clock.monotonic()
            for child in self.children.values():
                self._signal(child, signal.SIGTERM)
            # The smtpd workers close their copies as they drain; once ours is closed too,
            # new clients are refused at once (and try another MX) instead of waiting in
            # a backlog nobody will accept from.
            for sock in self.sockets:
                sock.close()

    handle_int = handle_term

    def handle_chld(self) -> None:
        pass  # reaping happens on every round

    def handle_hup(self) -> None:
        sd_notify.notify("RELOADING=1", sd_notify.monotonic_usec(), "STATUS=reloading")
        try:
            config = load_config(self.config_path)
            problems = preflight.file_problems(config)  # refused here, not by a new worker
        except ConfigError as exc:
            problems = [str(exc)]
        if problems:
            for problem in problems:
                log.error("reload failed, keeping the running configuration: %s", problem)
            sd_notify.notify("READY=1", f"STATUS=reload failed: {problems[0]}")
            return
        config = self._keep_what_needs_a_restart(config)
        if config.queue.path != self.config.queue.path:
            try:
                privileges.prepare_spool(config, self.account)
            except OSError as exc:  # the children will say so too, and be throttled
                log.error("cannot prepare the spool %s: %s", config.queue.path, exc)
        self.config = config
        self.generation += 1
        self.announced = False  # READY=1 again once the new generation is up
        log.info("reloading: replacing children one at a time (generation %d)", self.generation)

    def _keep_what_needs_a_restart(self, config: Config) -> Config:
        """The new configuration, with the listeners and the children's account of the
        running one: the master bound the one and resolved the other as root at start."""
        master = self.config.master
        if (config.master.user, config.master.allow_root) != (master.user, master.allow_root):
            log.warning("reload: master.user and master.allow_root need a restart")
            new_master = msgspec.structs.replace(
                config.master, user=master.user, allow_root=master.allow_root
            )
            config = msgspec.structs.replace(config, master=new_master)
        old, smtp = self.config, self.config.smtp
        bound = (old.listen_addresses(), smtp.reuse_port)
        if (config.listen_addresses(), config.smtp.reuse_port) != bound:
            log.warning(
                "reload: the listening addresses and smtp.reuse_port need a restart; keeping %s",
                self._listen_names(),
            )
            new_smtp = msgspec.structs.replace(
                config.smtp, listen=smtp.listen, reuse_port=smtp.reuse_port
            )
            config = msgspec.structs.replace(config, smtp=new_smtp, listeners=old.listeners)
        return config

    # ----- children -----------------------------------------------------------------------

    def wanted(self) -> list[tuple[str, int]]:
        """Every (kind, slot) that should have a running child."""
        slots: list[tuple[str, int]] = []
        for kind, spec in KINDS.items():
            slots.extend((kind, i) for i in range(spec.count(self.config)))
        return slots

    def _start_missing(self) -> None:
        running = {(c.kind, c.slot) for c in self.children.values()}
        for kind, slot in self.wanted():
            if (kind, slot) not in running and self.throttle.may_start((kind, slot)):
                self._start(kind, slot)

    def _start(self, kind: str, slot: int) -> Child:
        heartbeat = os.path.join(self.run_dir, f"{kind}-{slot}-{self.generation}.alive")
        os.close(os.open(heartbeat, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        if self.account is not None:  # the child touches it once it is the account
            os.chown(heartbeat, self.account.uid, self.account.gid)
        os.utime(heartbeat, (0, 0))  # not alive until the child says so
        pid = self.processes.spawn(
            kind, self.config, self.sockets, heartbeat, self._child_fds(), slot=slot
        )
        child = Child(kind, slot, pid, self.generation, heartbeat, self.clock.monotonic())
        self.children[pid] = child
        log.info("started %s", child.name)
        return child

    def _child_fds(self) -> list[int]:
        fds = [self._pipe_r, self._pipe_w]
        if self.http is not None:  # an orphaned child must not keep the metrics port bound
            fds.append(self.http.fileno())
        return fds

    def _reap(self) -> None:
        for pid, code in self.processes.reap():
            child = self.children.pop(pid, None)
            if child is not None:
                self._child_exited(child, code)

    def _child_exited(self, child: Child, code: int) -> None:
        from mta.master import http

        http.mark_dead(child.pid)
        ready = child.check_ready()  # it may have beaten once since the last round
        _remove(child.heartbeat)
        how = f"exit status {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
        if self.stopping_since is not None or child.stopping_since is not None:
            log.info("%s stopped (%s)", child.name, how)
            return
        if ready:
            self.served.add(child.kind)
        if code == EXIT_CONFIG and child.kind not in self.served:
            log.error("%s exited with a configuration error (see above); stopping", child.name)
            self.exit_code = EXIT_CONFIG
            self.handle_term()
            return
        lived = self.clock.monotonic() - child.started
        slot = (child.kind, child.slot)
        self.throttle.died(slot, ready and code != EXIT_CONFIG)
        if code == EXIT_CONFIG:
            log.error(
                "%s exited with a configuration error (see above) after its kind had served:"
                " a file it reads changed on disk; the others keep serving, restarting it in"
                " %.1fs",
                child.name,
                self.throttle.delay(slot),
            )
        elif ready:
            log.warning("%s died (%s) after %.1fs; replacing it", child.name, how, lived)
        else:
            log.warning(
                "%s died (%s) after %.1fs, before it was ready; restarting it in %.1fs",
                child.name,
                how,
                lived,
                self.throttle.delay(slot),
            )
        http.count_restart(child.kind)

    def _check_heartbeats(self) -> None:
        now, monotonic = self.clock.time(), self.clock.monotonic()
        limit = self.config.master.heartbeat_timeout
        for child in list(self.children.values()):
            if not child.ready and child.check_ready():
                self.throttle.ready((child.kind, child.slot))
                self.served.add(child.kind)
                log.debug("%s is ready", child.name)
            if child.stopping_since is not None:  # replaced by a reload and draining
                if monotonic - child.stopping_since > self._graceful() + _KILL_MARGIN:
                    log.warning("%s did not stop in time; killing it", child.name)
                    self._signal(child, signal.SIGKILL)
                continue
            last = child.alive_since()
            started_wall = now - (monotonic - child.started)
            if now - max(last, started_wall) > limit:
                log.error("%s stopped heart-beating for %.0fs; killing it", child.name, limit)
                self._signal(child, signal.SIGKILL)

    def _advance_reload(self) -> None:
        """Replace one outdated child at a time; the old one stops once the new one beats.

        An exclusive kind, and a slot the new configuration no longer wants, just stop;
        ``_start_missing`` starts what is wanted once the old one is gone.
        """
        outdated = [c for c in self.children.values() if c.generation < self.generation]
        if not outdated:
            return
        for child in outdated:
            if child.stopping_since is not None:
                return  # one replacement at a time
        old = outdated[0]
        if KINDS[old.kind].exclusive or (old.kind, old.slot) not in self.wanted():
            old.stopping_since = self.clock.monotonic()
            self._signal(old, signal.SIGTERM)
            return
        successor = next(
            (
                c
                for c in self.children.values()
                if (c.kind, c.slot) == (old.kind, old.slot) and c.generation == self.generation
            ),
            None,
        )
        if successor is None:
            if self.throttle.may_start((old.kind, old.slot)):  # a successor that dies young
                self._start(old.kind, old.slot)
        elif successor.check_ready():
            old.stopping_since = self.clock.monotonic()
            self._signal(old, signal.SIGTERM)

    def _escalate_stop(self) -> None:
        assert self.stopping_since is not None
        if self.clock.monotonic() - self.stopping_since > self._graceful() + _KILL_MARGIN:
            for child in self.children.values():
                log.warning("%s did not stop in time; killing it", child.name)
                self._signal(child, signal.SIGKILL)

    def _graceful(self) -> float:
        return self.config.master.graceful_timeout

    def _signal(self, child: Child, signum: int) -> None:
        self.processes.kill(child.pid, signum)

    # ----- setup and teardown ------------------------------------------------------------

    def _write_pidfile(self) -> None:
        """Mode 0644 whatever the umask; never through a symlink (a pidfile directory
        writable by others must not let them aim root's write elsewhere)."""
        if self.config.master.pidfile:
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(self.config.master.pidfile, flags, 0o644)
            try:
                os.fchmod(fd, 0o644)
                os.write(fd, f"{os.getpid()}\n".encode())
            finally:
                os.close(fd)

    def _cleanup(self) -> None:
        if self.http is not None:
            self.http.shutdown()
        for sock in self.sockets:
            sock.close()
        if self.config.master.pidfile:
            _remove(self.config.master.pidfile)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        metrics_dir.remove()

    def _listen_names(self) -> str:
        return ", ".join(self.config.listen_addresses())


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise


def run_master(config: Config, config_path: str | None) -> int:
    """``mta serve``: run the process tree until TERM; the exit status of the master.
    A configuration that cannot work is :data:`EXIT_CONFIG` before any child starts, with
    every problem logged (preflight.py): a service manager then does not restart it."""
    set_title("mta: master")  # ps -o args; /proc/self/comm stays the interpreter's
    raise_file_limit(config.smtp.max_connections)
    problems = preflight.check(config).problems
    account = None
    if not any(problem.startswith("queue.path:") for problem in problems):
        try:  # which files the children can read: the spool made, the account's probe
            account = prepare_for_children(config)
        except PrivilegeError as exc:
            problems.append(str(exc))
    for problem in problems:
        log.error("configuration error: %s", problem)
    if problems:
        where = config_path or "the defaults (no --config)"
        log.error("%d configuration problem(s) in %s: not starting", len(problems), where)
        return EXIT_CONFIG
    try:
        arbiter = Arbiter(config, config_path, account=account)
    except OSError as exc:
        log.error("cannot listen on %s: %s", ", ".join(config.listen_addresses()), exc.strerror)
        return 1
    return arbiter.run()


def prepare_for_children(config: Config) -> Account | None:
    """Choose the children's account, give them the spool and the metrics directory, and
    check they can use them (privileges.py); raise PrivilegeError if they cannot."""
    account = privileges.resolve(config.master)
    try:
        privileges.prepare_spool(config, account)
    except OSError as exc:  # every child would fail on it, again and again
        raise PrivilegeError(
            f"queue.path: cannot prepare the spool {os.path.abspath(config.queue.path)}: "
            f"{exc.strerror or exc}"
        ) from None
    directory = metrics_dir.path()
    if directory:
        privileges.give(directory, account, metrics_dir.MODE)
    if account is None:
        return None
    try:
        privileges.check_access(config, account)
    except PrivilegeError as exc:
        if not account.fallback:
            raise
        log.error(
            "%s; so the children run as root: create the account %r (deploy/systemd/"
            "mta.sysusers) or name one in master.user that can",
            exc,
            config.master.user,
        )
        return None
    log.info("the children run as %s (uid %d)", account.name, account.uid)
    return account


def raise_file_limit(max_connections: int) -> None:
    """Each SMTP session holds a socket (and maybe a queue file): lift the soft limit on open
    files to the hard limit, and say so when even that is below ``smtp.max_connections``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + 256  # sessions, plus the spool, logs and delivery sockets
    target = hard if hard == resource.RLIM_INFINITY else min(hard, max(soft, wanted))
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning(
            "open file limit %d is below smtp.max_connections=%d: sessions beyond it will be "
            "refused (raise LimitNOFILE / ulimit -n)",
            soft,
            max_connections,
        )
