"""The kinds of child process the master runs, and how one is started.

Each kind names how many the configuration wants and the function the child runs after
fork.  A child resets the master's signal handlers, closes what it must not hold, proves
it is alive by touching its heartbeat file from its own event loop, and exits with
:data:`EXIT_CONFIG` when the configuration cannot work (which stops a master that is
starting, instead of a restart loop; arbiter.py), 1 for other start-up failures (which are
throttled and retried).

A child names itself ``mta: <kind>`` in ``/proc/self/comm`` (what ``ps -o comm``, ``top``
and the tests see) and ``mta: <kind> #<slot>`` in its command line (``ps -o args``), and
stops gracefully, as on SIGTERM, when it finds from its heartbeat that the master is gone:
an orphan would keep serving without supervision.

Started by a master that runs as root, a child becomes the unprivileged account
(privileges.py) right before its main function: after what needs root (naming itself,
binding its own SO_REUSEPORT sockets, which may be port 25) and before anything that reads
a client's bytes or a queue file.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from mta.config import Config, ConfigError
from mta.exitcodes import EXIT_CONFIG
from mta.logs import flush_logs
from mta.master.privileges import Account, drop

__all__ = ["EXIT_CONFIG", "KINDS", "Heartbeat", "set_title", "spawn"]

log = logging.getLogger("mta.master")


@dataclass(frozen=True)
class Kind:
    count: Callable[[Config], int]
    run: Callable[[Config, list[socket.socket], Heartbeat], None]
    # Never two at once, not even during a reload: the old one stops before the new one
    # starts (the queue manager owns the queue; two would race over the same files).
    exclusive: bool = False
    # Drains the queue rather than answering clients: runs ``delivery.nice`` lower.
    back_end: bool = False
    # The sockets the child serves, made ready while it may still be root (before it
    # drops its privileges); by default the ones the master bound and handed down.
    sockets: Callable[[Config, list[socket.socket]], list[socket.socket]] = (
        lambda config, inherited: inherited
    )


def _smtpd_count(config: Config) -> int:
    return config.smtp.workers or os.cpu_count() or 1


def _smtpd_sockets(config: Config, inherited: list[socket.socket]) -> list[socket.socket]:
    from mta.server.listen import bind_listeners

    if not config.smtp.reuse_port:
        return inherited
    # A socket of its own in the SO_REUSEPORT group: the kernel spreads connections over
    # the workers by a hash of the addresses.  The price, and why it is not the default:
    # what waits in the accept queue of a worker that exits is reset (unless
    # net.ipv4.tcp_migrate_req=1), and nothing is queued while no worker is up.  (In this
    # mode the master hands down no socket: see arbiter.py.)
    return bind_listeners(config.listen_addresses(), reuse_port=True)


def _run_smtpd(config: Config, sockets: list[socket.socket], heartbeat: Heartbeat) -> None:
    from mta.server.worker import run_smtpd

    run_smtpd(config, sockets, heartbeat)


def _run_qmgr(config: Config, sockets: list[socket.socket], heartbeat: Heartbeat) -> None:
    from mta.qmgr.manager import run_qmgr

    _close(sockets)
    run_qmgr(config, heartbeat)


def _run_delivery(config: Config, sockets: list[socket.socket], heartbeat: Heartbeat) -> None:
    from mta.delivery.agent import run_delivery

    _close(sockets)
    run_delivery(config, heartbeat)


def _anvil_count(config: Config) -> int:
    """One per node while any per-client limit is on (mta/policy/limits.py)."""
    return 1 if config.limits.any_on else 0


def _run_anvil(config: Config, sockets: list[socket.socket], heartbeat: Heartbeat) -> None:
    from mta.anvil.server import run_anvil

    _close(sockets)
    run_anvil(config, heartbeat)


def _close(sockets: list[socket.socket]) -> None:
    """Only smtpd accepts: a listening socket held elsewhere would outlive a drain."""
    for sock in sockets:
        sock.close()


KINDS: dict[str, Kind] = {
    # First, so that it is up when the workers first ask; exclusive: one per node holds
    # the socket, so the old one stops before the new one starts (the workers count
    # alone for that moment, then tell the new one which connections they hold).
    "anvil": Kind(_anvil_count, _run_anvil, exclusive=True),
    "qmgr": Kind(lambda config: 1, _run_qmgr, exclusive=True, back_end=True),
    "delivery": Kind(lambda config: config.delivery.workers, _run_delivery, back_end=True),
    "smtpd": Kind(_smtpd_count, _run_smtpd, sockets=_smtpd_sockets),
}


def _run_child(
    kind: str, config: Config, sockets: list[socket.socket], heartbeat: Heartbeat
) -> None:
    """Run the child's main function; ``MTA_PROFILE_DIR`` writes a cProfile per child."""
    run = KINDS[kind].run
    profile_dir = os.environ.get("MTA_PROFILE_DIR")
    if not profile_dir:
        run(config, sockets, heartbeat)
        return
    import cProfile

    profiler = cProfile.Profile()
    try:
        profiler.runcall(run, config, sockets, heartbeat)
    finally:
        profiler.dump_stats(os.path.join(profile_dir, f"{kind}-{os.getpid()}.prof"))


def spawn(
    kind: str,
    config: Config,
    sockets: list[socket.socket],
    heartbeat: str,
    close_fds: list[int],
    account: Account | None = None,
    slot: int = 0,
) -> int:
    """Fork a child of ``kind`` (its title says ``slot``: ``mta: smtpd #1``) that runs as
    ``account`` (None: as the master); return its pid in the parent, never return in the
    child."""
    master = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        for fd in close_fds:
            os.close(fd)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the master reloads; children don't
        set_title(f"mta: {kind} #{slot}", comm=f"mta: {kind}")
        if KINDS[kind].back_end and config.delivery.nice:
            # When CPU is short, a client waiting for its reply comes before a message
            # that is already safe on disk: the queue absorbs a burst and drains after.
            os.nice(config.delivery.nice)
        sockets = KINDS[kind].sockets(config, sockets)
        drop(account)
        _run_child(kind, config, sockets, Heartbeat(heartbeat, master))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except ConfigError as exc:  # a file the configuration names: restarting cannot help
        log.error("%s: configuration error: %s", kind, exc)
        code = EXIT_CONFIG
    except OSError as exc:
        log.error("%s failed: %s", kind, exc)
        code = 1
    except BaseException:  # whatever kills a child is logged before it exits
        log.exception("%s crashed", kind)
        code = 1
    finally:
        flush_logs()
        sys.stderr.flush()
        os._exit(code)


class Heartbeat:
    """A child's proof of life, made in the child: the file its event loop touches.

    The loop calls it (:meth:`beat`) as often as it likes; the file is touched at most once
    per ``interval``, and on the way the child finds out whether the master (``master``,
    its pid) is gone.
    """

    def __init__(
        self,
        path: str,
        master: int,
        interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.master = master
        self.interval = interval
        self.clock = clock
        self.last = float("-inf")  # the first call beats

    def beat(self) -> None:
        now = self.clock()
        if now - self.last < self.interval:
            return
        self.last = now
        if os.getppid() != self.master:  # orphaned: drain and exit, as on the master's TERM
            os.kill(os.getpid(), signal.SIGTERM)
            return
        os.utime(self.path)

    __call__ = beat  # what the children's main functions take: a callable


def set_title(title: str, comm: str | None = None) -> None:
    """Name the process: ``title`` in its command line (what ``ps -o args``, ``ps aux`` and
    ``top -c`` show; setproctitle, as Postfix's daemons rewrite argv) and ``comm`` in
    /proc/self/comm (``ps -o comm``, ``top``; Linux keeps 15 bytes; None: keep today's,
    which setproctitle would otherwise overwrite).  Harmless where unsupported."""
    from setproctitle import setproctitle

    path = "/proc/self/comm"
    try:
        with open(path) as f:
            comm = f.read().rstrip("\n") if comm is None else comm
    except OSError:
        comm = None
    setproctitle(title)
    if comm is None:
        return
    try:
        with open(path, "w") as f:
            f.write(comm[:15])
    except OSError:
        pass
