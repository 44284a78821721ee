"""Who the children run as, and what the master prepares for them before they start.

Started as root, the master binds the listeners (port 25 needs it) and each child drops to
an unprivileged account, ``master.user`` (default ``mta``, which the deploy files create):
after fork, before the child's main, it sets its groups, then its gid, then its uid (the
uid last: after it, nothing else can be changed).  Postfix does the same: only its master
(and local delivery) keep root, every other daemon runs as ``mail_owner``.

* An account that does not exist (a fresh machine, README's first command) falls back to
  ``nobody``, with a warning that says how to do better.  If even ``nobody`` cannot run
  the children -- it cannot read the Python installation (pyenv under ``/root``, say) or
  reach the spool -- the children keep root, with an error line that says why and what to
  do: README's first command must work on a fresh machine, and that is the only way it
  can there.  A deployment names or creates the account, and gets no such leniency.
* An account with uid 0 is refused unless ``master.allow_root = true`` (then with a
  warning, and the children keep root).
* Not started as root, nothing changes: everything runs as the invoking user.

What the master creates, it creates with explicit modes, whatever the umask: the spool
root 0700 owned by the account (a spool left by a run as another user is given to the
account, file by file), the metrics directory 0700 owned by the account, the heartbeat
directory 0710 (root, the account's group) with heartbeat files 0600 owned by the account,
and the pidfile 0644.

Before any child starts, a probe process drops to the account exactly as a child would and
checks that it can read the interpreter's import path (the children import modules as they
need them), use the spool and read the TLS files.  If it cannot, the master stops with
:class:`PrivilegeError` (exit :data:`~mta.exitcodes.EXIT_CONFIG`) naming the path and why:
every child would fail the same way, again and again.  So does a spool that cannot be
created or used at all (preflight.py checks it first; a file system that is mounted late is
the service manager's to order: systemd's ``RequiresMountsFor=``).
"""

from __future__ import annotations

import logging
import os
import pwd
import stat
import sys
from dataclasses import dataclass

from mta.config import Config, MasterConfig

__all__ = [
    "FALLBACK_USER",
    "Account",
    "PrivilegeError",
    "check_access",
    "drop",
    "give",
    "prepare_spool",
    "resolve",
]

log = logging.getLogger("mta.master")

FALLBACK_USER = "nobody"
SPOOL_MODE = 0o700
PARENT_MODE = 0o755  # directories above the spool that the master had to make


class PrivilegeError(Exception):
    """The children cannot run as configured; the message names the key and the path."""


@dataclass(frozen=True)
class Account:
    """The unprivileged account the children run as."""

    name: str
    uid: int
    gid: int
    fallback: bool = False  # FALLBACK_USER, standing in for a master.user that is missing


def resolve(master: MasterConfig) -> Account | None:
    """The account for the children; None when they keep the master's identity (it is not
    root, or root is allowed).  Raises PrivilegeError for a configuration that cannot be."""
    if os.geteuid() != 0:
        return None
    fallback = False
    try:
        entry = pwd.getpwnam(master.user)
    except KeyError:
        fallback = True
        try:
            entry = pwd.getpwnam(FALLBACK_USER)
        except KeyError:
            raise PrivilegeError(
                f"master.user: there is no account {master.user!r}, nor {FALLBACK_USER!r} "
                "to fall back on"
            ) from None
        log.warning(
            "master.user: there is no account %r; falling back to %r (create %r as "
            "deploy/ does, or name another account)",
            master.user,
            FALLBACK_USER,
            master.user,
        )
    if entry.pw_uid == 0:
        if not master.allow_root:
            raise PrivilegeError(
                f"master.user = {master.user!r} is root: the children would run as root; "
                "name an unprivileged account, or set master.allow_root = true"
            )
        log.warning("the children run as root (master.allow_root = true)")
        return None
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, fallback)


def drop(account: Account | None) -> None:
    """In a child, after fork: become ``account`` for good (None: stay as we are)."""
    if account is None:
        return
    os.setgroups([account.gid])
    os.setgid(account.gid)
    os.setuid(account.uid)  # real, effective and saved: there is no way back


def give(path: str, account: Account | None, mode: int, group_only: bool = False) -> None:
    """Set the mode of ``path`` (made by the master) and, with an account, its owner:
    the account, or (``group_only``) root with the account's group."""
    if account is not None:
        os.chown(path, 0 if group_only else account.uid, account.gid)
    os.chmod(path, mode)


def prepare_spool(config: Config, account: Account | None) -> None:
    """Make the spool root (mode 0700) if it is missing and give it to ``account``; raise
    OSError if that cannot be done.  The state directories inside are the children's to
    make (Spool.create), as the account."""
    path = os.path.abspath(config.queue.path)
    _make_parents(os.path.dirname(path))
    try:
        os.mkdir(path, SPOOL_MODE)
    except FileExistsError:
        pass
    if account is not None and not _owned_by(path, account):
        count = _give_tree(path, account)
        log.info("spool %s: gave %d files and directories to %s", path, count, account.name)
    st = os.stat(path)
    if stat.S_IMODE(st.st_mode) != SPOOL_MODE and os.geteuid() in (0, st.st_uid):
        os.chmod(path, SPOOL_MODE)  # explicit: not whatever the umask left


def _make_parents(path: str) -> None:
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    for directory in reversed(missing):
        try:
            os.mkdir(directory, PARENT_MODE)
        except FileExistsError:
            continue
        os.chmod(directory, PARENT_MODE)


def _owned_by(path: str, account: Account) -> bool:
    """The spool root and what is right inside it belong to ``account`` (then the rest does
    too, unless someone meddled: a full walk of a large queue at every start costs)."""
    entries = [path, *(os.path.join(path, name) for name in os.listdir(path))]
    return all(os.lstat(p).st_uid == account.uid for p in entries)


def _give_tree(path: str, account: Account) -> int:
    """chown everything under ``path`` to the account; how many entries it changed."""
    count = 0
    for root, dirs, files in os.walk(path):
        for p in [root, *(os.path.join(root, n) for n in dirs + files)]:
            st = os.lstat(p)
            if (st.st_uid, st.st_gid) != (account.uid, account.gid):
                os.lchown(p, account.uid, account.gid)
                count += 1
    return count


def check_access(config: Config, account: Account) -> None:
    """Probe, as ``account``, that the children can use the spool and read the TLS files
    and the smarthost's password file; raise PrivilegeError naming what they cannot."""
    import_path = _code_sources()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the probe: nothing here may raise past os._exit
        problem = "the access probe failed"
        try:
            os.close(read_end)
            drop(account)
            problem = _access_problem(config, account, import_path)
        except OSError as exc:
            problem = f"cannot become {account.name}: {exc.strerror}"
        finally:
            os.write(write_end, problem.encode())
            os._exit(0)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 4096):
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(pid, 0)
    problem = b"".join(chunks).decode()
    if problem:
        raise PrivilegeError(problem)


def _code_sources() -> list[str]:
    """The entries of sys.path that the code loaded so far came from: the standard library,
    site-packages, mta's own.  The children (forks of the master) import more from them as
    they go; an entry nothing came from (the working directory, say) does not matter."""
    files = [
        f for m in list(sys.modules.values()) if isinstance(f := getattr(m, "__file__", None), str)
    ]
    sources = []
    for entry in sys.path:
        if entry and os.path.isdir(entry):
            prefix = os.path.join(os.path.abspath(entry), "")
            if any(f.startswith(prefix) for f in files):
                sources.append(entry)
    return sources


def _access_problem(config: Config, account: Account, import_path: list[str]) -> str:
    """What the account cannot do that the children need ('' if nothing); run as it.
    ``import_path``: where the children's code comes from (:func:`_code_sources`)."""
    for entry in import_path:
        wanted = os.R_OK | os.X_OK if os.path.isdir(entry) else os.R_OK
        if not os.access(entry, wanted):
            return (
                f"user {account.name} cannot read {entry} on Python's import path: "
                f"{_blocker(entry)}"
            )
    spool = os.path.abspath(config.queue.path)
    if not os.access(spool, os.R_OK | os.W_OK | os.X_OK):
        return f"queue.path: user {account.name} cannot use {spool}: {_blocker(spool)}"
    sections = [
        ("smtp", config.smtp),
        *((f"listeners.{n}", x) for n, x in config.listeners.items()),
    ]
    for section, table in sections:
        for key in ("tls_cert", "tls_key"):
            path = getattr(table, key)
            if path and not os.access(path, os.R_OK):
                blocker = _blocker(path)
                return f"{section}.{key}: user {account.name} cannot read {path}: {blocker}"
    auth_file = config.delivery.smtp_auth_file  # read by the delivery processes
    if auth_file and not os.access(auth_file, os.R_OK):
        blocker = _blocker(auth_file)
        return f"delivery.smtp_auth_file: user {account.name} cannot read {auth_file}: {blocker}"
    return ""


def _blocker(path: str) -> str:
    """Which directory on the way to ``path`` stops the current user, and how."""
    parts = path.split(os.sep)
    for i in range(1, len(parts)):
        directory = os.sep.join(parts[:i]) or os.sep
        if not os.access(directory, os.X_OK):
            return f"{directory} is not searchable for it ({_describe(directory)})"
    return f"it is {_describe(path)}"


def _describe(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError as exc:
        return exc.strerror or str(exc)
    owner = _name_of(st.st_uid)
    return f"mode {stat.filemode(st.st_mode)}, owner {owner}"


def _name_of(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
