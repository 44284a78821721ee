"""Readiness follows the spool's free space; liveness does not (mta/master/http.py).

The first tests ask :func:`health` and :func:`liveness` from an arbiter's view, in the
test process (a stand-in arbiter, a fake file system); the last one asks a real process
tree over HTTP, with a reserve no disk can meet.
"""

from __future__ import annotations

import os
import smtplib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import msgspec
import pytest

from mta.config import Config
from mta.master.arbiter import Arbiter
from mta.master.http import health, liveness
from mta.queue.space import SpoolSpace
from tests.helpers import MtaProcess, wait_until
from tests.master import http_get, scrape
from tests.master.fakes import FakeClock

pytestmark = pytest.mark.timeout(60)

MiB = 1 << 20


@dataclass
class Child:
    kind: str
    beat: float  # wall time of its last heartbeat

    def alive_since(self) -> float:
        return self.beat


@dataclass
class StandIn:
    """What health() reads of an arbiter: its clock, configuration and children."""

    config: Config
    clock: FakeClock = field(default_factory=FakeClock)
    children: dict[int, Child] = field(default_factory=dict)


class Disk:
    def __init__(self, avail: int) -> None:
        self.avail = avail

    def statvfs(self, path: str) -> os.statvfs_result:
        blocks = self.avail // 4096
        return os.statvfs_result((4096, 4096, 1 << 30, blocks, blocks, 0, 0, 0, 0, 255))


def arbiter_with_one_smtpd(spool: Path, **queue: object) -> Arbiter:
    config = msgspec.convert({"queue": {"path": str(spool), **queue}}, Config)
    (spool / "tmp").mkdir(parents=True)
    stand_in = StandIn(config)
    stand_in.children[4001] = Child("smtpd", stand_in.clock.time())
    return cast(Arbiter, stand_in)


def test_not_ready_while_the_spool_is_short_of_space_and_ready_again_after(
    tmp_path: Path,
) -> None:
    arbiter = arbiter_with_one_smtpd(tmp_path / "spool", min_free=2 * MiB)
    disk = Disk(avail=100 * MiB)

    def probe() -> tuple[bool, str]:
        space = SpoolSpace.for_config(arbiter.config, max_age=0.0, statvfs=disk.statvfs)
        return health(arbiter, space)

    assert probe() == (True, "ok: 1 smtpd workers alive")
    floor = 26_214_400 * 3 // 2  # 1.5 x the default smtp.max_message_size
    disk.avail = floor - 4096
    assert probe() == (False, f"spool short of space: {floor - 4096} bytes free, {floor} needed")
    assert liveness(arbiter) == (True, "ok: master running, 1 children")  # not a restart case
    disk.avail = floor
    assert probe() == (True, "ok: 1 smtpd workers alive")


def test_readiness_measures_the_real_spool_by_default(tmp_path: Path) -> None:
    ready = arbiter_with_one_smtpd(tmp_path / "a")
    assert health(ready) == (True, "ok: 1 smtpd workers alive")
    unmeetable = arbiter_with_one_smtpd(tmp_path / "b", min_free=1 << 62)
    ok, reason = health(unmeetable)
    assert not ok
    assert reason.startswith("spool short of space: ") and reason.endswith(f"{1 << 62} needed")


def test_probes_and_the_free_space_gauge_of_a_real_tree(
    mta_factory: Callable[..., MtaProcess],
) -> None:
    server = mta_factory({"queue": {"min_free": 1 << 62}})  # no disk has that much
    status, body = wait_until(
        lambda: (r := http_get(server.metrics_port, "/livez"))[0] == 200 and r, timeout=10
    )
    assert body.startswith("ok: master running, ")
    for path in ("/readyz", "/healthz"):
        status, body = http_get(server.metrics_port, path)
        assert status == 503, (path, body)
        assert body.startswith("spool short of space: ") and body.endswith(f"{1 << 62} needed\n")
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
        client.ehlo("client.test")
        assert client.mail("a@client.test") == (452, b"4.3.1 Insufficient system storage")
    wait_until(  # counted with its own reason, published within a second
        lambda: (
            scrape(server.metrics_port).value(
                "mta_smtpd_rejects_total", reason="insufficient_storage"
            )
            == 1
        ),
        timeout=10,
    )
    st = os.statvfs(server.spool)
    free = scrape(server.metrics_port).value("mta_queue_free_bytes")
    assert abs(free - st.f_bavail * st.f_frsize) < 256 * MiB  # other writers share the disk
    assert free > 0
    log = server.log()
    assert "NOQUEUE: reject: MAIL from [127.0.0.1]: 452 4.3.1 Insufficient system storage" in log
