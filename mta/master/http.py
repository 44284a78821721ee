"""The master's HTTP endpoint: ``/metrics`` for Prometheus, ``/livez``, ``/readyz`` and
``/healthz`` for probes.

It runs in one thread of the master (the master itself has no event loop).  Metrics come
from every process through prometheus-client's multiprocess mode: the master owns the
directory (``metrics_dir.prepare`` wipes it before any child starts) and marks dead
children so their live gauges disappear.  The spool's free space
(``mta_queue_free_bytes``) is measured here, at each scrape.

The probes follow Kubernetes' split (as its own API server does):

* ``/readyz`` (and ``/healthz``, its older name) answers whether the relay can take mail
  now: 200 when at least one smtpd worker beat recently, the spool accepts a new file and
  has room (mta/queue/space.py: the rule smtpd applies to MAIL), else 503 with the reason.
  A load balancer stops sending clients while it fails, and resumes by itself.
* ``/livez`` answers 200 while the master runs: a full disk, a dead next hop or a child
  being replaced is nothing a restart of the pod would mend (the master replaces its own
  children), so liveness must not fail for them.

A scrape must not fail because a child is starting or was killed: see :class:`_Collector`.
"""

from __future__ import annotations

import glob
import logging
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

from mta import metrics
from mta.config import parse_hostport
from mta.queue.space import SpoolSpace

if TYPE_CHECKING:
    from mta.master.arbiter import Arbiter

__all__ = ["count_restart", "health", "liveness", "mark_dead", "start"]

log = logging.getLogger("mta.master")


def mark_dead(pid: int) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)


def count_restart(kind: str) -> None:
    metrics.CHILD_RESTARTS.labels(kind).inc()


class _Collector(multiprocess.MultiProcessCollector):
    """The multiprocess collector, minus two ways for one child to fail the whole page.

    prometheus-client creates a child's ``.db`` file at 0 bytes and sizes it just after;
    a scrape in between raised ``struct.error``, and a child killed in between left the
    empty file behind for good (prometheus/client_python#1199, open in 0.26), so every
    later scrape failed.  Empty files are skipped here.  A file that disappears while we
    read (a dead child's live gauges, removed by :func:`mark_dead`) means read again.
    """

    def collect(self):  # type: ignore[no-untyped-def]
        attempts = 3
        while True:
            files = [f for f in glob.glob(os.path.join(self._path, "*.db")) if _nonempty(f)]
            try:
                return self.merge(files, accumulate=True)
            except FileNotFoundError:
                attempts -= 1
                if not attempts:
                    raise


def _nonempty(path: str) -> bool:
    try:
        return os.path.getsize(path) > 0
    except FileNotFoundError:
        return False


def health(arbiter: Arbiter, space: SpoolSpace | None = None) -> tuple[bool, str]:
    """Is the relay able to take mail now?  (ok, reason) — readiness.  ``space`` is the
    spool's (measured now, by default)."""
    now = arbiter.clock.time()
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
    space = space or _spool_space(arbiter)
    if not space.has_room():
        return False, f"spool short of space: {space.describe()}"
    return True, f"ok: {len(alive)} smtpd workers alive"


def liveness(arbiter: Arbiter) -> tuple[bool, str]:
    """Is the master alive?  Answering proves it; what fails readiness does not count."""
    return True, f"ok: master running, {len(arbiter.children)} children"


def _spool_space(arbiter: Arbiter) -> SpoolSpace:
    """The spool's free space, measured at once (a probe or scrape is seconds apart)."""
    return SpoolSpace.for_config(arbiter.config, max_age=0.0)


def _publish_free_bytes(arbiter: Arbiter) -> None:
    space = _spool_space(arbiter)
    free = space.free()
    if not space.error:  # an unmeasurable spool keeps its last value; readiness says why
        metrics.QUEUE_FREE_BYTES.set(free)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: tuple[str, int]) -> None:
        # socketserver would print the traceback to stderr itself, past the log format
        log.exception("metrics endpoint: a request from %s failed", client_address[0])


def start(arbiter: Arbiter) -> ThreadingHTTPServer | None:
    listen = arbiter.config.metrics.listen
    if not listen:
        return None
    host, port = parse_hostport(listen)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                _publish_free_bytes(arbiter)
                registry = CollectorRegistry()
                _Collector(registry)
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/readyz", "/livez"):
                ok, reason = liveness(arbiter) if path == "/livez" else health(arbiter)
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

    server = _Server((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    log.info("metrics on http://%s/metrics", listen)
    return server
