"""A real Prometheus server scrapes the master's ``/metrics`` (DESIGN.md §5).

``/usr/bin/prometheus`` runs on a free loopback port with its own configuration and a
throw-away TSDB, scrapes the relay every second, and its HTTP API must return what the
relay delivered.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.delivery.sink import CaptureSink
from tests.helpers import MtaProcess, free_port, wait_until
from tests.master import http_get, send_messages

pytestmark = pytest.mark.timeout(120)

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
K = 5


class Prometheus:
    def __init__(self, workdir: Path, target: str) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.config = workdir / "prometheus.yml"
        self.config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  scrape_timeout: 1s\n"
            "scrape_configs:\n"
            "  - job_name: mta\n"
            "    static_configs:\n"
            f"      - targets: ['{target}']\n"
        )
        self.log_path = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Prometheus:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(self._ready, timeout=30, interval=0.2)
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        assert self.proc.poll() is None, self.log_path.read_text()
        try:
            return http_get(self.port, "/-/ready")[0] == 200
        except OSError:
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        status, body = http_get(self.port, "/api/v1/query?query=" + urllib.parse.quote(expr))
        assert status == 200, body
        reply = json.loads(body)
        assert reply["status"] == "success", reply
        result: list[dict[str, Any]] = reply["data"]["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The value of a query that gives one series, None while it gives none."""
        result = self.query(expr)
        if not result:
            return None
        assert len(result) == 1, result
        return float(result[0]["value"][1])

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def test_prometheus_scrapes_the_delivered_counter(
    mta_factory: Callable[..., MtaProcess], sink: CaptureSink, tmp_path: Path
) -> None:
    server = mta_factory({"delivery": {"relayhost": f"127.0.0.1:{sink.port}"}})
    prometheus = Prometheus(tmp_path, f"127.0.0.1:{server.metrics_port}").start()
    try:
        # the target is up and every series has its labels as Prometheus sees them
        wait_until(lambda: prometheus.value('up{job="mta"}') == 1.0, timeout=20, interval=0.3)
        send_messages(server.port, K)
        sink.wait_for(K)
        completed = "mta_delivery_messages_completed_total"
        wait_until(lambda: prometheus.value(completed) == K, timeout=20, interval=0.3)
        # delivery agents publish their counters once a second: the next scrapes get there
        attempts = 'mta_delivery_attempts_total{result="sent"}'
        wait_until(lambda: prometheus.value(attempts) == K, timeout=10, interval=0.3)
        wait_until(
            lambda: prometheus.value("mta_smtpd_messages_received_total") == K,
            timeout=10,
            interval=0.3,
        )
        assert prometheus.value("mta_delivery_latency_seconds_count") == K
        [build] = prometheus.query("mta_build_info")
        assert build["metric"]["job"] == "mta"
        assert build["metric"]["instance"] == f"127.0.0.1:{server.metrics_port}"
        assert prometheus.value('mta_queue_messages{state="deferred"}') == 0
    finally:
        prometheus.stop()
    assert prometheus.proc is not None and prometheus.proc.returncode == 0
