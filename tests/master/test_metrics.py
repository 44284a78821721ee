"""``/metrics`` and ``/healthz`` of the master (DESIGN.md §5), read as Prometheus reads them.

The page is parsed with prometheus-client's own parser; counters are compared before and
after K messages went through the relay to a capture sink.
"""

from __future__ import annotations

import os
import smtplib
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mta import __version__
from mta.qmgr.manager import COUNT_SECONDS
from tests.delivery.sink import CaptureSink
from tests.helpers import MtaProcess, wait_until
from tests.master import Scrape, children_by_kind, http_get, scrape, send_messages

pytestmark = pytest.mark.timeout(120)

Factory = Callable[..., MtaProcess]
K = 7
QUEUE_STATES = ("incoming", "active", "deferred", "hold", "corrupt")


def expected_backend() -> str:
    """What ``auto`` must pick (the same rule as tests/protocol/test_parser_guard.py)."""
    return "python" if os.environ.get("MTA_NO_EXTENSIONS") == "1" else "c"


def test_counters_after_k_messages(mta_factory: Factory, sink: CaptureSink) -> None:
    server = mta_factory(
        {"smtp": {"workers": 2}, "delivery": {"relayhost": f"127.0.0.1:{sink.port}"}}
    )
    before = wait_until(lambda: _ready(scrape(server.metrics_port)), timeout=10)
    octets = send_messages(server.port, K)
    sink.wait_for(K)
    wait_until(lambda: _settled(scrape(server.metrics_port), before), timeout=15)
    # Nothing may rise past K: a claim about time, so look again once every publisher has
    # had one more round.  The slowest is the queue manager (it counts the queue every
    # COUNT_SECONDS); smtpd and delivery publish their counters once a second.
    time.sleep(COUNT_SECONDS)
    after = scrape(server.metrics_port)

    def rose(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert rose("mta_smtpd_messages_received_total") == K
    assert rose("mta_delivery_attempts_total", result="sent") == K
    assert rose("mta_delivery_attempts_total", result="deferred") == 0
    assert rose("mta_delivery_attempts_total", result="failed") == 0
    assert rose("mta_delivery_messages_completed_total") == K
    assert rose("mta_delivery_latency_seconds_count") == K
    assert rose("mta_delivery_latency_seconds_bucket", le="+Inf") == K
    assert 0 < rose("mta_delivery_latency_seconds_sum") < 60 * K
    assert rose("mta_delivery_domain_attempts_total", domain="example.org", result="sent") == K
    assert rose("mta_delivery_bounces_total") == 0
    # bytes: the messages as sent plus the Received header smtpd adds to each
    received = rose("mta_smtpd_received_bytes_total")
    assert octets <= received < octets + 1000 * K
    assert 1 <= rose("mta_queue_commit_batches_total") <= K
    # one flush-time observation per commit
    assert rose("mta_queue_commit_seconds_count") == rose("mta_queue_commit_batches_total")
    assert 0 < rose("mta_queue_commit_seconds_sum") < 10 * K
    for state in QUEUE_STATES:
        assert after.value("mta_queue_messages", state=state) == 0
    # connections: one per message, all closed again; replies of every session:
    # 220 greeting, 250 EHLO, 250 MAIL, 250 RCPT, 354 DATA, 250 queued, 221 QUIT
    assert rose("mta_smtpd_connections_opened_total") == K
    assert after.value("mta_smtpd_connections_current") == 0
    assert rose("mta_smtpd_replies_total", code_class="2xx") == 6 * K
    assert rose("mta_smtpd_replies_total", code_class="3xx") == K
    assert rose("mta_smtpd_replies_total", code_class="4xx") == 0
    assert rose("mta_smtpd_replies_total", code_class="5xx") == 0
    # the static ones
    backends = after.labelled("mta_parser_backend_info")
    assert backends == {frozenset({("backend", expected_backend())}): 1.0}
    assert after.labelled("mta_build_info") == {frozenset({("version", __version__)}): 1.0}
    assert after.value("mta_master_child_restarts_total", kind="smtpd") == 0


def _ready(page: Scrape) -> Scrape | None:
    """The page once smtpd (with the start-up probe's connection) and the queue manager
    have reported."""
    probed = page.value("mta_smtpd_connections_opened_total") >= 1
    if probed and page.labelled("mta_queue_messages"):
        return page
    return None


def _settled(page: Scrape, before: Scrape) -> Scrape | None:
    """The page once every process has published what the K messages did.

    smtpd publishes its counters once a second and the queue manager counts the queue
    every two seconds, so this waits for all of them, and the caller scrapes once more
    after that to see that nothing keeps rising past K.
    """
    for name, labels in _PER_MESSAGE:
        if page.value(name, **labels) - before.value(name, **labels) < K:
            return None
    empty = all(page.value("mta_queue_messages", state=s) == 0 for s in QUEUE_STATES)
    closed = page.value("mta_smtpd_connections_current") == 0
    return page if empty and closed else None


_PER_MESSAGE: list[tuple[str, dict[str, str]]] = [
    ("mta_smtpd_connections_opened_total", {}),
    ("mta_smtpd_messages_received_total", {}),
    ("mta_smtpd_replies_total", {"code_class": "3xx"}),
    ("mta_delivery_attempts_total", {"result": "sent"}),
    ("mta_delivery_messages_completed_total", {}),
    ("mta_delivery_latency_seconds_count", {}),
]


def test_queue_gauges_count_deferred_messages(mta_factory: Factory, sink: CaptureSink) -> None:
    sink.data_reply = (451, "4.3.0 try again later")
    server = mta_factory({"delivery": {"relayhost": f"127.0.0.1:{sink.port}"}})
    send_messages(server.port, 3)
    page = wait_until(  # each process publishes within a second or two: wait for both
        lambda: (
            (p := scrape(server.metrics_port)).value("mta_queue_messages", state="deferred") == 3
            and p.value("mta_delivery_attempts_total", result="deferred") >= 3
            and p
        ),
        timeout=15,
    )
    assert page.value("mta_queue_messages", state="incoming") == 0
    assert page.value("mta_queue_messages", state="active") == 0
    assert page.value("mta_delivery_attempts_total", result="deferred") == 3
    assert page.value("mta_delivery_messages_completed_total") == 0
    assert page.value("mta_delivery_latency_seconds_count") == 0  # only successes count
    assert page.value("mta_queue_oldest_message_age_seconds") > 0


def test_connections_current_counts_open_sessions(mta_factory: Factory) -> None:
    server = mta_factory({"smtp": {"workers": 2}})
    clients = [smtplib.SMTP("127.0.0.1", server.port, timeout=10) for _ in range(5)]
    try:
        for client in clients:
            assert client.ehlo("client.test")[0] == 250
        wait_until(
            lambda: scrape(server.metrics_port).value("mta_smtpd_connections_current") == 5,
            timeout=10,
        )
    finally:
        for client in clients:
            client.quit()
            client.close()
    wait_until(
        lambda: scrape(server.metrics_port).value("mta_smtpd_connections_current") == 0,
        timeout=10,
    )


def metrics_dir(server: MtaProcess) -> Path:
    """The master's multiprocess directory, found through a child's mapped ``.db`` files."""
    smtpd = wait_until(lambda: children_by_kind(server.pid).get("smtpd"), timeout=10)
    maps = Path(f"/proc/{smtpd[0]}/maps").read_text()
    paths = [line.split()[-1] for line in maps.splitlines() if line.endswith(".db")]
    assert paths, "no metrics file mapped"
    return Path(paths[0]).parent


def test_an_empty_metrics_file_does_not_break_the_page(mta_factory: Factory) -> None:
    """A child killed between creating its file and sizing it leaves it empty for good
    (prometheus/client_python#1199): the page must still be served, with everything else."""
    server = mta_factory()
    directory = metrics_dir(server)
    wait_until(lambda: scrape(server.metrics_port).value("mta_smtpd_connections_opened_total"))
    for kind in ("counter", "gauge_livesum", "histogram"):
        (directory / f"{kind}_4194000.db").write_bytes(b"")
    send_messages(server.port, 2)
    page = wait_until(
        lambda: (
            (p := scrape(server.metrics_port)).value("mta_smtpd_messages_received_total") == 2 and p
        ),
        timeout=10,
    )
    assert page.labelled("mta_build_info")


def test_healthz_while_serving_and_without_a_spool(mta_factory: Factory) -> None:
    server = mta_factory()
    status, body = wait_until(
        lambda: (r := http_get(server.metrics_port, "/healthz"))[0] == 200 and r, timeout=10
    )
    assert body == "ok: 1 smtpd workers alive\n"
    tmp = server.spool / "tmp"
    saved = server.spool / "tmp.saved"
    tmp.rename(saved)
    tmp.write_text("not a directory\n")
    try:
        status, body = http_get(server.metrics_port, "/healthz")
        assert status == 503
        assert body.startswith("spool not writable:"), body
    finally:
        tmp.unlink()
        saved.rename(tmp)
    assert http_get(server.metrics_port, "/healthz")[0] == 200
    assert http_get(server.metrics_port, "/nothing-here")[0] == 404


def test_healthz_without_a_live_smtpd(mta_factory: Factory, tmp_path: Path) -> None:
    # A damaged spool: a file where tmp/ should be, so every smtpd dies at start while the
    # master serves.  (A spool that cannot be made at all stops the master with EX_CONFIG
    # before any child starts: test_preflight.py.)
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "tmp").write_text("a regular file: the children's tmp/ cannot be made\n")
    server = mta_factory({"queue": {"path": str(spool)}}, wait=False)
    wait_until(lambda: "smtpd#0" in server.log() and " died " in server.log(), timeout=10)
    status, body = http_get(server.metrics_port, "/healthz")
    assert (status, body) == (503, "no smtpd worker is alive\n")
