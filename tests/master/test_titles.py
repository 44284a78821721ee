"""How children start: their process titles on a real ``mta serve`` tree (what ``ps -o args``
shows, setproctitle, while ``/proc/PID/comm`` keeps ``mta: <kind>``), and the exit status of
one that meets a configuration error."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from mta.config import Config, ConfigError
from mta.exitcodes import EXIT_CONFIG
from mta.master import children
from mta.master.children import Heartbeat
from tests.helpers import MtaProcess, child_pids, wait_until
from tests.master import children_by_kind


def _args(pid: int) -> str:
    """What ``ps -o args`` shows: the command line, NULs (and setproctitle's padding) gone."""
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return " ".join(part.decode() for part in raw.split(b"\0") if part)


def test_every_process_has_its_title_and_comm_is_unchanged(
    mta_factory: Callable[..., MtaProcess],
) -> None:
    server = mta_factory({"smtp": {"workers": 2}, "delivery": {"workers": 1}})
    wait_until(lambda: len(children_by_kind(server.pid).get("smtpd", [])) == 2)
    assert _args(server.pid) == "mta: master"
    titles = sorted(_args(pid) for pid in child_pids(server.pid))
    assert titles == ["mta: anvil #0", "mta: delivery #0", "mta: qmgr #0", "mta: smtpd #0",
                      "mta: smtpd #1"]  # fmt: skip
    kinds = children_by_kind(server.pid)  # /proc/PID/comm: as before
    assert sorted(kinds) == ["anvil", "delivery", "qmgr", "smtpd"]


def test_a_child_that_meets_a_configuration_error_exits_ex_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Whatever kind raises ConfigError at start exits 78, which stops a starting master
    (arbiter.py) instead of a respawn loop; its message names the key and the file."""

    def broken(config: Config, sockets: list[socket.socket], heartbeat: Heartbeat) -> None:
        raise ConfigError('dkim.keys."example.org".key: /etc/mta/k.pem: cannot read')

    monkeypatch.setitem(children.KINDS, "broken", children.Kind(lambda config: 1, broken))
    log = logging.getLogger("mta.test.children")  # the child's log lines, to a file
    handler = logging.FileHandler(tmp_path / "child.log")
    log.addHandler(handler)
    monkeypatch.setattr(children, "log", log)
    heartbeat = tmp_path / "beat"
    heartbeat.touch()
    pid = children.spawn("broken", Config(), [], str(heartbeat), [])
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == EXIT_CONFIG == 78
    log.removeHandler(handler)
    handler.close()
    text = (tmp_path / "child.log").read_text()
    assert 'broken: configuration error: dkim.keys."example.org".key: /etc/mta/k.pem' in text
