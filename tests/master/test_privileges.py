"""The children run as an unprivileged account; the master prepares what they need with
explicit modes (issue 10 item 9; mta/master/privileges.py).

Ordinary tests let the children keep root (tests/helpers.py: their spool is under pytest's
tmp_path, whose parents are 0700 root).  These run them as ``nobody`` -- the account every
Debian system has, and the fallback when ``master.user`` does not exist -- with the spool in
a directory that account can reach.  They need root, to drop it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from glob import glob
from pathlib import Path
from typing import Any

import pytest

from mta.config import ConfigError, MasterConfig, load_config
from mta.master import privileges
from tests.delivery.sink import CaptureSink
from tests.helpers import MtaProcess, free_port, stop_all, wait_until
from tests.master import children_by_kind, port_accepts, scrape, send_messages

pytestmark = pytest.mark.timeout(90)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")

Factory = Callable[..., MtaProcess]
NOBODY = pwd.getpwnam("nobody")


def open_to_all(path: str) -> bool:
    """Every directory on the way to ``path`` lets any account through."""
    resolved = Path(path).resolve()
    return all(os.stat(d).st_mode & stat.S_IXOTH for d in [*resolved.parents, resolved])


PYTHON_OPEN = all(open_to_all(e) for e in sys.path if e and os.path.exists(e))


@pytest.fixture(scope="session")
def python_for_nobody() -> Iterator[list[str]]:
    """How to start ``mta serve`` so that its children, once nobody, can still import: as
    it is, or -- Python installed where nobody cannot read it, like pyenv under a 0700
    /root here -- from a bind mount of the installation on a path anyone can reach, in a
    mount namespace of the master's own (nothing changes for the rest of the machine)."""
    if PYTHON_OPEN:
        yield [sys.executable]
        return
    unshare = shutil.which("unshare")
    if unshare is None or sys.prefix != sys.base_prefix:
        pytest.skip("Python is not readable by nobody, and cannot be bind-mounted here")
    mount_point = Path(tempfile.mkdtemp(prefix="mta-python-"))
    mount_point.chmod(0o755)
    python = mount_point / Path(sys.executable).relative_to(sys.prefix)
    script = 'mount --bind "$0" "$1" && shift && exec "$@"'  # $0 is no argument
    namespace = [unshare, "--mount", "--propagation", "private", "--"]
    yield [*namespace, "sh", "-c", script, sys.prefix, str(mount_point), str(python)]
    mount_point.rmdir()


@pytest.fixture
def nobody_factory(
    tmp_path: Path, python_for_nobody: list[str]
) -> Iterator[Callable[..., MtaProcess]]:
    """mta_factory's twin, with a Python the children can still read once they are nobody."""
    started: list[MtaProcess] = []

    def start(overrides: dict[str, Any], wait: bool = True) -> MtaProcess:
        workdir = tmp_path / f"nobody{len(started)}"
        workdir.mkdir()
        started.append(MtaProcess(workdir, overrides, python=python_for_nobody))
        return started[-1].start(wait=wait)

    yield start
    stop_all(started)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every account can reach (pytest's tmp_path is not one)."""
    path = Path(tempfile.mkdtemp(prefix="mta-priv-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def unprivileged(spool: Path, sink: CaptureSink | None = None, **master: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "queue": {"path": str(spool)},
        "master": {"user": "nobody", "allow_root": False, **master},
        "smtp": {"workers": 2},
    }
    if sink is not None:
        config["delivery"] = {"relayhost": f"127.0.0.1:{sink.port}"}
    return config


def ids(pid: int) -> tuple[list[int], list[int], list[int]]:
    """Real, effective, saved and file uids; the same gids; the supplementary groups."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            fields[key] = [int(v) for v in value.split()]
    return fields["Uid"], fields["Gid"], fields["Groups"]


def all_children(server: MtaProcess) -> list[int]:
    kinds = wait_until(
        lambda: (
            (k := children_by_kind(server.pid)).keys() >= {"smtpd", "qmgr", "delivery"}
            and len(k["smtpd"]) == 2
            and k
        ),
        timeout=15,
    )
    return [pid for pids in kinds.values() for pid in pids]


def mode_and_owner(path: str | Path) -> tuple[int, int, int]:
    st = os.lstat(path)
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


@needs_root
def test_children_run_as_nobody_when_the_account_is_missing_and_modes_ignore_the_umask(
    nobody_factory: Factory, sink: CaptureSink, open_dir: Path
) -> None:
    spool, pidfile = open_dir / "spool", open_dir / "mta.pid"
    config = unprivileged(spool, sink, user="mta-no-such-account", pidfile=str(pidfile))
    umask = os.umask(0)  # the master's files must not take their modes from it
    try:
        server = nobody_factory(config)
    finally:
        os.umask(umask)
    children = all_children(server)
    send_messages(server.port, 5)
    sink.wait_for(5)

    uid, gid = NOBODY.pw_uid, NOBODY.pw_gid
    assert ids(server.pid)[0] == [0, 0, 0, 0]  # the master keeps root (it binds, forks)
    for pid in children:
        assert ids(pid) == ([uid] * 4, [gid] * 4, [gid]), pid
    log = server.log()
    assert "there is no account 'mta-no-such-account'; falling back to 'nobody'" in log
    assert f"the children run as nobody (uid {uid})" in log
    assert "stopped heart-beating" not in log and " died " not in log

    assert mode_and_owner(spool) == (0o700, uid, gid)
    for root, dirs, files in os.walk(spool):  # everything in it is the account's
        for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
            assert os.lstat(name).st_uid == uid, name
    assert mode_and_owner(pidfile) == (0o644, 0, 0)
    [run_dir] = glob(f"{tempfile.gettempdir()}/mta-master-{server.pid}-*")
    assert mode_and_owner(run_dir) == (0o710, 0, gid)
    beats = glob(f"{run_dir}/*.alive")
    assert beats and all(mode_and_owner(b) == (0o600, uid, gid) for b in beats)
    [metrics_dir] = glob(f"{tempfile.gettempdir()}/mta-metrics-{server.pid}-*")
    assert mode_and_owner(metrics_dir) == (0o700, uid, gid)
    # the children's metrics reach /metrics through it
    wait_until(
        lambda: scrape(server.metrics_port).value("mta_smtpd_messages_received_total") >= 5,
        timeout=10,
    )


@needs_root
def test_a_root_account_is_refused_unless_allowed(mta_factory: Factory, open_dir: Path) -> None:
    server = mta_factory(unprivileged(open_dir / "spool", user="root"), wait=False)
    assert server.proc is not None
    assert server.proc.wait(20) == 78  # EX_CONFIG: no child ever ran
    log = server.log()
    assert "master.user = 'root' is root: the children would run as root" in log
    assert "started" not in log
    assert not port_accepts(server.port)

    allowed = mta_factory(unprivileged(open_dir / "spool", user="root", allow_root=True))
    for pid in all_children(allowed):
        assert ids(pid)[0] == [0, 0, 0, 0]
    assert "the children run as root (master.allow_root = true)" in allowed.log()


@needs_root
def test_a_spool_the_account_cannot_reach_stops_the_master_with_the_reason(
    nobody_factory: Factory, tmp_path: Path
) -> None:
    """The master sees it once, instead of children failing at start forever."""
    hidden = tmp_path / "private"
    hidden.mkdir(mode=0o700)
    server = nobody_factory(unprivileged(hidden / "spool"), wait=False)
    assert server.proc is not None
    assert server.proc.wait(20) == 78
    log = server.log()
    assert f"queue.path: user nobody cannot use {hidden / 'spool'}: " in log
    assert "is not searchable for it (mode drwx------, owner root)" in log
    assert "Traceback" not in log


@needs_root
def test_a_tls_key_the_account_cannot_read_stops_the_master(
    nobody_factory: Factory, open_dir: Path, tmp_path: Path
) -> None:
    key = open_dir / "key.pem"
    key.write_text("not read before the check\n")
    key.chmod(0o600)  # root's alone
    config = unprivileged(open_dir / "spool")
    config["smtp"].update(tls_cert=str(key), tls_key=str(key))
    server = nobody_factory(config, wait=False)
    assert server.proc is not None
    assert server.proc.wait(20) == 78
    assert f"smtp.tls_cert: user nobody cannot read {key}: it is mode -rw-------" in server.log()


@needs_root
def test_a_spool_left_by_a_root_run_is_given_to_the_account(
    mta_factory: Factory, nobody_factory: Factory, sink: CaptureSink, open_dir: Path
) -> None:
    spool = open_dir / "spool"
    config = unprivileged(spool, user="root", allow_root=True)
    config["delivery"] = {"relayhost": f"127.0.0.1:{free_port()}"}  # nothing listens there
    first = mta_factory(config)
    send_messages(first.port, 5)  # the next hop is down: they wait in deferred/, as root's
    wait_until(lambda: len(os.listdir(spool / "deferred")) == 5, timeout=30)
    assert first.stop() == 0
    assert os.stat(spool / "deferred").st_uid == 0

    second = nobody_factory(unprivileged(spool, sink))
    flush = [sys.executable, "-m", "mta", "--config", str(second.config_path), "queue", "flush"]
    subprocess.run(flush, check=True, capture_output=True, timeout=30, cwd=second.workdir)
    sink.wait_for(5, timeout=30)
    assert "files and directories to nobody" in second.log()
    for root, dirs, files in os.walk(spool):
        for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
            assert os.lstat(name).st_uid == NOBODY.pw_uid, name


def test_directories_of_killed_masters_are_removed_at_start_and_no_others(
    mta_factory: Factory,
) -> None:
    """Each kill -9 of a tree left /tmp/mta-master-* and /tmp/mta-metrics-* behind."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead_pid = int(dead.stdout)
    tmp = tempfile.gettempdir()
    made = {
        name: Path(tempfile.mkdtemp(prefix=name, dir=tmp))
        for name in (
            f"mta-master-{dead_pid}-",
            f"mta-metrics-{dead_pid}-",
            f"mta-master-{os.getpid()}-",  # a running master (this test, as far as it knows)
            f"mta-metrics-{os.getpid()}-",
            "mta-master-nopid",  # whose?  cannot be told: kept
        )
    }
    try:
        killed = mta_factory()
        killed_dirs = glob(f"{tmp}/mta-*-{killed.pid}-*")
        assert len(killed_dirs) == 2
        killed.kill_tree()
        mta_factory()
        assert not any(os.path.exists(d) for d in killed_dirs)
        assert not made[f"mta-master-{dead_pid}-"].exists()
        assert not made[f"mta-metrics-{dead_pid}-"].exists()
        assert made[f"mta-master-{os.getpid()}-"].exists()
        assert made[f"mta-metrics-{os.getpid()}-"].exists()
        assert made["mta-master-nopid"].exists()
    finally:
        for path in made.values():
            shutil.rmtree(path, ignore_errors=True)


def test_an_empty_user_is_a_configuration_error(tmp_path: Path) -> None:
    path = tmp_path / "mta.toml"
    path.write_text('[master]\nuser = ""\n')
    with pytest.raises(ConfigError, match=r"master\.user: must name an account"):
        load_config(str(path))


def test_not_started_as_root_everything_keeps_the_invoking_user(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    for master in (MasterConfig(), MasterConfig(user="root"), MasterConfig(user="nobody")):
        assert privileges.resolve(master) is None  # no setuid possible: nothing to refuse


@needs_root
def test_the_account_is_resolved_with_its_fallback_and_root_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    nobody = privileges.Account("nobody", NOBODY.pw_uid, NOBODY.pw_gid)
    assert privileges.resolve(MasterConfig(user="nobody")) == nobody
    assert "no account" not in caplog.text
    fallback = privileges.Account("nobody", NOBODY.pw_uid, NOBODY.pw_gid, fallback=True)
    assert privileges.resolve(MasterConfig(user="mta-no-such-account")) == fallback
    assert "there is no account 'mta-no-such-account'" in caplog.text
    with pytest.raises(privileges.PrivilegeError, match=r"master\.allow_root = true"):
        privileges.resolve(MasterConfig(user="root"))
    assert privileges.resolve(MasterConfig(user="root", allow_root=True)) is None


@needs_root
@pytest.mark.skipif(PYTHON_OPEN, reason="here nobody can read Python: it runs the children")
def test_a_named_account_that_cannot_read_python_stops_the_master(
    mta_factory: Factory, open_dir: Path
) -> None:
    server = mta_factory(unprivileged(open_dir / "spool"), wait=False)
    assert server.proc is not None
    assert server.proc.wait(20) == 78
    log = server.log()
    assert "user nobody cannot read " in log and " on Python's import path: " in log
    assert "started" not in log


@needs_root
@pytest.mark.skipif(PYTHON_OPEN, reason="here nobody can read Python: it runs the children")
def test_a_fresh_machine_where_nobody_cannot_run_the_children_keeps_root_and_says_why(
    mta_factory: Factory, sink: CaptureSink, open_dir: Path
) -> None:
    """README's first command as root, Python under a 0700 /root (pyenv), no account mta:
    it must still work, and say loudly why the children are root and what to do."""
    server = mta_factory(unprivileged(open_dir / "spool", sink, user="mta-no-such-account"))
    for pid in all_children(server):
        assert ids(pid)[0] == [0, 0, 0, 0]
    send_messages(server.port, 3)
    sink.wait_for(3)
    log = server.log()
    assert "falling back to 'nobody'" in log
    assert "so the children run as root: create the account 'mta-no-such-account'" in log


@needs_root
def test_a_smarthost_password_file_the_account_cannot_read_stops_the_master(
    nobody_factory: Factory, open_dir: Path
) -> None:
    """delivery.smtp_auth_file passes the master's own check (0600, root's) but the
    delivery processes, as nobody, could not read it: refused before any child starts."""
    secrets = open_dir / "smtp_auth"
    secrets.write_text("[relay.test]:587 user:password\n")
    secrets.chmod(0o600)  # root's alone
    config = unprivileged(open_dir / "spool")
    config["delivery"] = {"smtp_auth_file": str(secrets)}
    server = nobody_factory(config, wait=False)
    assert server.proc is not None
    assert server.proc.wait(20) == 78
    expected = f"delivery.smtp_auth_file: user nobody cannot read {secrets}: it is mode -rw-------"
    assert expected in server.log()
