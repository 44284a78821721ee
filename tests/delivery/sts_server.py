"""PolicyServer: an HTTPS server for MTA-STS policy files, for the delivery tests.

RFC 8461 fixes the URL (``https://mta-sts.DOMAIN/.well-known/mta-sts.txt``, port 443), so
the server listens on port 443 of an address of its own in 127.0.0.0/8 (binding a port
below 1024 needs root, as the tests and CI run; elsewhere :func:`start_policy_server`
skips the test), and the test DNS server points ``mta-sts.DOMAIN`` at it.  Its certificate
comes from the test CA the relay trusts (``delivery.tls_ca_file``).

It counts requests, and answers with what the test sets: the policy text, or another
status, media type or a redirect.  It runs ``http.server`` in a thread of its own; the
TLS handshake is done by the handler's thread, so a client that refuses the certificate
stops nothing else.
"""

from __future__ import annotations

import random
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Self

import pytest
import trustme

__all__ = ["PolicyServer", "start_policy_server"]

POLICY_PATH = "/.well-known/mta-sts.txt"


def policy_text(mode: str, *mx: str, max_age: int = 86400) -> str:
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {m}" for m in mx), f"max_age: {max_age}"]
    return "\r\n".join(lines) + "\r\n"


class PolicyServer:
    """Serves one policy on ``host``:443 with a certificate for ``names``."""

    def __init__(self, ca: trustme.CA, *names: str, host: str = "") -> None:
        self.host = host or f"127.{random.randrange(1, 255)}.{random.randrange(256)}.1"
        self.body = b""
        self.status = 200
        self.content_type = "text/plain; charset=utf-8"
        self.location = ""
        self.requests: list[tuple[str, str]] = []  # (Host header, path)
        self._lock = threading.Lock()
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert(*names).configure_cert(self._context)
        self._server = _Server((self.host, 443), _Handler)
        self._server.policy = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def serve(self, text: str, status: int = 200, content_type: str = "text/plain") -> None:
        with self._lock:
            self.body, self.status, self.content_type = text.encode(), status, content_type

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def _answer(self, handler: _Handler) -> None:
        with self._lock:
            self.requests.append((handler.headers.get("Host", ""), handler.path))
            status, body, content_type = self.status, self.body, self.content_type
        if handler.path != POLICY_PATH:
            status, body = 404, b"not found\n"
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        if 300 <= status < 400:
            handler.send_header("Location", f"https://elsewhere.test{POLICY_PATH}")
        handler.end_headers()
        handler.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    policy: PolicyServer

    def finish_request(self, request, client_address):  # type: ignore[no-untyped-def]
        request.settimeout(10)
        try:
            tls = self.policy._context.wrap_socket(request, server_side=True)
        except OSError:  # ssl.SSLError too
            return  # the client refused our certificate: its business
        try:
            super().finish_request(tls, client_address)
        finally:
            tls.close()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.server.policy._answer(self)
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass


def start_policy_server(ca: trustme.CA, *names: str) -> PolicyServer:
    """A server on a fresh loopback address's port 443, or a skipped test without root."""
    try:
        return PolicyServer(ca, *names)
    except PermissionError:
        pytest.skip("binding port 443 (RFC 8461's policy URL) needs root")
