"""Process titles on a real ``mta serve`` tree: what ``ps -o args`` shows for each process
(setproctitle), while ``/proc/PID/comm`` (``ps -o comm``, top) keeps ``mta: <kind>``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

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
