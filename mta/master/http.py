"""The master's HTTP endpoint: ``/metrics`` for Prometheus and ``/healthz`` for probes.

It runs in one thread of the master (the master itself has no event loop).  Metrics come
from every process through prometheus-client's multiprocess mode: the master owns the
directory (``metrics_dir.prepare`` wipes it before any child starts) and marks dead
children so their live gauges disappear.  ``/healthz`` answers 200 when every smtpd slot
has a child that beat recently and the spool accepts a new file, 503 otherwise.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

from mta import metrics
from mta.config import parse_hostport

if TYPE_CHECKING:
    from mta.master.arbiter import Arbiter

__all__ = ["count_restart", "mark_dead", "start"]

log = logging.getLogger("mta.master")


def mark_dead(pid: int) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)


def count_restart(kind: str) -> None:
    metrics.CHILD_RESTARTS.labels(kind).inc()


def health(arbiter: Arbiter) -> tuple[bool, str]:
    """Is the relay able to take mail now?  (ok, reason)"""
    now = time.time()
    limit = arbiter.config.master.heartbeat_timeout
    smtpd = [c for c in arbiter.children.values() if c.kind == "smtpd"]
    alive = [c for c in smtpd if now - c.alive_since() <= limit]
    if not alive:
        return False, "no smtpd worker is alive"
    spool_tmp = os.path.join(os.path.abspath(arbiter.config.queue.path), "tmp")
    probe = os.path.join(spool_tmp, f".health-{os.getpid()}")
    try:
        with open(probe, "wb"):
            pass
        os.unlink(probe)
    except OSError as exc:
        return False, f"spool not writable: {exc.strerror}"
    return True, f"ok: {len(alive)} smtpd workers alive"


def start(arbiter: Arbiter) -> ThreadingHTTPServer | None:
    listen = arbiter.config.metrics.listen
    if not listen:
        return None
    host, port = parse_hostport(listen)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                registry = CollectorRegistry()
                multiprocess.MultiProcessCollector(registry)
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                ok, reason = health(arbiter)
                self._send(200 if ok else 503, reason.encode() + b"\n", "text/plain")
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    log.info("metrics on http://%s/metrics", listen)
    return server
