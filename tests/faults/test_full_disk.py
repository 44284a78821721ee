"""A full spool disk (issue 10, item 1): refused at MAIL, not ready, back by itself, no loss.

The spool is a small tmpfs mounted by the test (root only; skipped with the reason
otherwise), a real relay (``mta serve``) relays to a capture sink, and a ballast file takes
the tmpfs's free space while a client sends.  What must hold:

* while space is short, a new transaction gets ``452 4.3.1`` at MAIL (not ``451`` after the
  whole DATA), and so does a MAIL whose SIZE does not fit;
* ``/readyz`` (and ``/healthz``) answer 503 meanwhile, ``/livez`` 200;
* once the ballast is gone the relay accepts again by itself, and every message that got a
  ``250`` is delivered;
* commits that fail on the full disk leave no segment file and no open descriptor behind
  in the queue manager, however many there are.

Each test prints its figures (acknowledged, delivered, lost, duplicated, how long the
refusal and the recovery took), for the issue note.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.delivery.sink import CaptureSink
from tests.faults.diskspace_helpers import (
    Ballast,
    MountFailedError,
    Sender,
    delivered_tags,
    free_bytes,
    mail_reply,
    message,
    open_fds,
    process_of,
    tmpfs,
    wait_for,
)
from tests.helpers import MtaProcess, RawClient
from tests.master import http_get

pytestmark = pytest.mark.timeout(90)

Factory = Callable[..., MtaProcess]
KiB, MiB = 1 << 10, 1 << 20
FS_SIZE = 16 * MiB  # the spool's tmpfs
MAX_SIZE = 256 * KiB  # smtp.max_message_size: Postfix's floor is 1.5 x this = 384 KiB
MIN_FREE = 1 * MiB  # queue.min_free: what must stay free after a message
STORAGE = (452, b"4.3.1 Insufficient system storage")
REACT = 3.0  # seconds within which a refusal must start or end (the cache is 0.5 s)


@pytest.fixture
def spool_fs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of FS_SIZE for the spool, unmounted after the relay has stopped (this
    fixture is set up before ``mta_factory``, so it is torn down after it)."""
    try:
        with tmpfs(tmp_path / "spoolfs", FS_SIZE) as mount:
            yield mount
    except MountFailedError as exc:
        pytest.skip(str(exc))


def relay(mta_factory: Factory, spool_fs: Path, sink: CaptureSink) -> MtaProcess:
    overrides: dict[str, Any] = {
        "smtp": {"max_message_size": MAX_SIZE},
        "queue": {"path": str(spool_fs / "spool"), "min_free": MIN_FREE},
        # a message deferred while the disk was full is tried again soon after
        "delivery": {"relayhost": f"127.0.0.1:{sink.port}", "min_backoff": 1, "max_backoff": 2},
    }
    return mta_factory(overrides)


def readiness(server: MtaProcess) -> tuple[int, str]:
    return http_get(server.metrics_port, "/readyz")


def report(name: str, **figures: object) -> None:
    print(f"\n[{name}] " + ", ".join(f"{k}={v}" for k, v in figures.items()))


def test_a_size_that_does_not_fit_gets_452_at_mail(
    spool_fs: Path, sink: CaptureSink, mta_factory: Factory
) -> None:
    server = relay(mta_factory, spool_fs, sink)
    ballast = Ballast(spool_fs / "ballast")
    ballast.leave_free(MIN_FREE + 128 * KiB)  # room for 128 KiB beyond the reserve
    wait_for(lambda: mail_reply(server.port, 192 * KiB) == STORAGE, REACT)
    assert mail_reply(server.port, 64 * KiB)[0] == 250
    assert mail_reply(server.port)[0] == 250  # no SIZE: only the reserve and the floor
    assert readiness(server)[0] == 200  # a transaction of unknown size still fits
    ballast.remove()
    wait_for(lambda: mail_reply(server.port, 192 * KiB)[0] == 250, REACT)
    refusal = "NOQUEUE: reject: MAIL from [127.0.0.1]: 452 4.3.1 Insufficient system storage"
    assert f"{refusal}; from=<probe@client.test> size={192 * KiB}: " in server.log()


def test_a_full_disk_refuses_at_mail_and_the_relay_recovers_by_itself(
    spool_fs: Path, sink: CaptureSink, mta_factory: Factory
) -> None:
    server = relay(mta_factory, spool_fs, sink)
    with Sender(server.port) as sender:
        wait_for(lambda: len(sender.acked) >= 20, 15)
        ballast = Ballast(spool_fs / "ballast")
        ballast.fill()  # while the client sends
        assert free_bytes(spool_fs) < 64 * KiB
        refusal_after = wait_for(lambda: mail_reply(server.port) == STORAGE, REACT)
        # 451 after DATA only for what passed MAIL before that (at most the session the
        # client has open now): from here on it is told at MAIL
        failed_before_refusal = sender.count("451 after DATA")
        assert mail_reply(server.port, 1024) == STORAGE
        status, body = readiness(server)
        assert status == 503 and body.startswith("spool short of space: "), body
        assert http_get(server.metrics_port, "/healthz")[0] == 503
        assert http_get(server.metrics_port, "/livez")[0] == 200  # not a case for a restart
        wait_for(lambda: sender.count("452 at MAIL") >= 20, 15)  # the client hears it too
        assert sender.count("451 after DATA") <= failed_before_refusal + 1
        ballast.remove()
        accepting_after = wait_for(lambda: mail_reply(server.port)[0] == 250, REACT)
        ready_after = wait_for(lambda: readiness(server)[0] == 200, REACT)
        resumed = len(sender.acked)
        wait_for(lambda: len(sender.acked) >= resumed + 20, 15)  # no restart, no HUP
    acked = set(sender.acked)
    try:
        wait_for(lambda: acked <= set(delivered_tags(sink)), 60, interval=0.2)
    except TimeoutError:
        pass  # the figures below say what is missing
    delivered = delivered_tags(sink)
    lost = sorted(acked - set(delivered))
    report(
        "full disk",
        acked=len(acked),
        delivered=len(acked & set(delivered)),
        lost=len(lost),
        duplicated=sum(n - 1 for n in delivered.values()),
        refused_452_at_mail=sender.count("452 at MAIL"),
        failed_451_after_data=sender.count("451 after DATA"),
        other=sender.count("other"),
        seconds_until_refusing=round(refusal_after, 2),
        seconds_until_accepting_again=round(accepting_after, 2),
        seconds_until_ready_again=round(accepting_after + ready_after, 2),
    )
    assert lost == [], f"acknowledged but never delivered: {lost[:20]}"
    assert sender.errors == []


def test_failed_commits_leave_no_segment_and_no_descriptor_behind(
    spool_fs: Path, sink: CaptureSink, mta_factory: Factory
) -> None:
    """Sessions that passed MAIL while there was room, then meet a full disk at the end of
    DATA: each gets 451 and must cost nothing that stays (issue 10: each left an empty
    segment and an fd in the queue manager, which crash-looped once it ran out)."""
    rounds, sessions = 5, 40
    server = relay(mta_factory, spool_fs, sink)
    segments = spool_fs / "spool" / "segments"
    assert Sender(server.port).send_one(0) == "250"
    sink.wait_for(1)
    files_before = sorted(p.name for p in segments.iterdir())
    qmgr = process_of(server.pid, "qmgr")
    fds_before = open_fds(qmgr)
    ballast = Ballast(spool_fs / "ballast")
    failed = 0
    for _ in range(rounds):
        wait_for(lambda: mail_reply(server.port)[0] == 250, REACT)
        clients = [in_data(server.port) for _ in range(sessions)]
        ballast.fill()
        for n, client in enumerate(clients):  # one at a time: a failed commit each
            client.send(message(n, 2048) + b".\r\n")
            reply = client.reply()
            assert reply.startswith(b"451 4.3.0 "), reply
            failed += 1
            client.close()
        ballast.leave_free(4 * MiB)
    ballast.remove()
    assert Sender(server.port).send_one(1) == "250"
    sink.wait_for(2, timeout=30)  # the queue manager still delivers
    files_after = sorted(p.name for p in segments.iterdir())
    qmgr_after = process_of(server.pid, "qmgr")
    fds_after = open_fds(qmgr_after)
    report(
        "failed commits",
        failed_commits=failed,
        segment_files_before=len(files_before),
        segment_files_after=len(files_after),
        qmgr_fds_before=fds_before,
        qmgr_fds_after=fds_after,
        qmgr_restarted=qmgr_after != qmgr,
    )
    # a worker may have moved on to one new segment (and the queue manager made its .done)
    assert len(files_after) <= len(files_before) + 2, files_after
    assert fds_after <= fds_before + 4


def in_data(port: int) -> RawClient:
    """A session that got 354: MAIL passed while there was room."""
    client = RawClient(port)
    assert client.cmd(b"EHLO client.test").startswith(b"250")
    assert client.cmd(b"MAIL FROM:<s@client.test>").startswith(b"250")
    assert client.cmd(b"RCPT TO:<r@example.org>").startswith(b"250")
    assert client.cmd(b"DATA").startswith(b"354")
    return client
