"""What is checked before anything serves: one list of problems, for ``serve``, ``check-config``
and the master's reload.

Each problem is a line ``key: file: what is wrong`` (the key in the configuration, the file or
address it names, and why it cannot be used), and every check runs, so an operator sees all of
them at once, not the first alone.  The checks:

* the files the configuration names: AUTH's password and sender-login files, the access and
  recipient tables, DKIM keys, the smarthost's credentials (each loaded as the daemons load
  it, by the same function), and every listener's certificate and key, loaded into an
  SSLContext (which also proves that the key matches the certificate);
* the spool (``queue.path``): a directory this process can write, or one it can create;
* with ``ports`` (``check-config``): run as root, that ``master.user`` can use the spool and
  read the files (the probe the master runs at start); each listening address, and the
  metrics address, can be bound now.  An address already in use is *not* a problem -- the
  relay itself may hold it (check-config is run next to a serving relay before a HUP) --
  and is reported as a note; so is a port below 1024 that needs a capability this process
  lacks (the systemd unit gives it to ``serve``, not to an operator's ``check-config``).
  ``serve`` does not need the probe: it binds for real, and says which address failed.

Nothing here changes anything on disk.  The spool is checked as the calling process; that the
children's account can use it is privileges.py's probe, run by the master once it has made it.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from mta.config import Config, ConfigError, parse_hostport

__all__ = ["Findings", "check", "file_problems", "spool_problem"]


@dataclass
class Findings:
    """The problems (each stops the start) and notes (said, but nothing stops)."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def check(config: Config, *, ports: bool = False) -> Findings:
    """Every check this module owns; see the module docstring.  With ``ports`` (what
    ``check-config`` asks), also the listening addresses, and, run as root, what the
    children's account can use (the master probes that itself when it starts)."""
    findings = Findings(problems=file_problems(config))
    if problem := spool_problem(config.queue.path):
        findings.problems.append(problem)
    if ports:
        _check_ports(config, findings)
        if os.geteuid() == 0 and not problem:
            _check_account(config, findings)
    return findings


def _check_account(config: Config, findings: Findings) -> None:
    """As root: that ``master.user`` can use the spool and read the files (privileges.py's
    probe).  A spool not made yet is the master's to make and give to the account."""
    from mta.master.privileges import PrivilegeError, check_access, resolve

    try:
        account = resolve(config.master)
    except PrivilegeError as exc:
        findings.problems.append(str(exc))
        return
    if account is None or not os.path.isdir(config.queue.path):
        return
    try:
        check_access(config, account)
    except PrivilegeError as exc:  # a stand-in account that cannot: the children keep root
        (findings.notes if account.fallback else findings.problems).append(str(exc))


def file_problems(config: Config) -> list[str]:
    """The files the configuration names, each loaded as its daemon loads it (also on HUP)."""
    from mta.delivery.credentials import load_credentials
    from mta.delivery.signing import load_signer
    from mta.policy.auth import load_auth_tables
    from mta.policy.tables import load_tables
    from mta.server.tls import server_context

    loaders: list[Callable[[], object]] = [
        lambda: load_auth_tables(config),  # auth.passwords, auth.sender_logins
        lambda: load_tables(config),  # [access] tables, relay.recipients
        lambda: load_signer(config),  # every DKIM key: read and parsed
        lambda: load_credentials(config),  # delivery.smtp_auth_file: mode and lines
    ]
    for listener in config.resolved_listeners():  # certificate and key, and that they match
        loaders.append(lambda listener=listener: server_context(config, listener))  # type: ignore[misc]
    problems = []
    for load in loaders:
        try:
            load()
        except ConfigError as exc:
            problems.append(str(exc))
    return list(dict.fromkeys(problems))  # listeners that share [smtp]'s files: said once


def spool_problem(path: str) -> str:
    """What stops this process from using ``path`` as the spool ('' if nothing): it must be
    a directory it can write and enter, or, missing, one it can create (its nearest
    existing parent writable)."""
    spool = os.path.abspath(path)
    if os.path.lexists(spool):
        if not os.path.isdir(spool):
            return f"queue.path: {spool}: not a directory"
        if not os.access(spool, os.W_OK | os.X_OK):
            return f"queue.path: {spool}: not writable by uid {os.geteuid()}"
        if _read_only(spool):
            return f"queue.path: {spool}: on a read-only file system"
        return ""
    parent = os.path.dirname(spool)
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"queue.path: {spool}: cannot be created: {parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK) or _read_only(parent):
        return f"queue.path: {spool}: cannot be created: {parent} is not writable"
    return ""


def _read_only(path: str) -> bool:
    """os.access says yes to root on a read-only mount (or /proc): ask the file system."""
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def _check_ports(config: Config, findings: Findings) -> None:
    addresses = [
        (
            f"listeners.{listener.name}.listen"
            if listener.name in config.listeners
            else "smtp.listen",
            a,
        )
        for listener in config.resolved_listeners()
        for a in listener.listen
    ]
    if config.metrics.listen:
        addresses.append(("metrics.listen", config.metrics.listen))
    for key, address in addresses:
        host, port = parse_hostport(address)
        try:
            _probe_bind(host, port)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                findings.notes.append(
                    f"{key}: {address} is in use (by the running relay, or another server)"
                )
            elif exc.errno == errno.EACCES:  # the unit grants the capability to serve only
                findings.notes.append(
                    f"{key}: {address}: uid {os.geteuid()} cannot bind it: port {port} needs "
                    "root or CAP_NET_BIND_SERVICE (deploy/systemd/mta.service grants it)"
                )
            else:
                findings.problems.append(f"{key}: {address}: cannot bind: {exc.strerror or exc}")


def _probe_bind(host: str, port: int) -> None:
    """Bind ``host``:``port`` and let it go at once (SO_REUSEADDR, as the listeners have)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
