"""Debian's haproxy in front of the relay, started by a test: ``mode tcp`` frontends on
127.0.0.3 that pass each connection to a relay listener with a PROXY header (``send-proxy``
for v1, ``send-proxy-v2`` for v2), as a TCP load balancer in production does.

The test's client binds its socket to 127.0.0.2 (:func:`client_source`), so that the
address haproxy reports (127.0.0.2) differs from the one the relay sees on the socket
(haproxy's own, 127.0.0.1).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BALANCER", "CLIENT", "Frontend", "Haproxy", "client_source"]

HAPROXY = "/usr/sbin/haproxy"
BALANCER = "127.0.0.3"  # where haproxy listens
CLIENT = "127.0.0.2"  # where the test's clients connect from


def client_source() -> tuple[str, int]:
    """``source_address`` for smtplib and socket.create_connection."""
    return (CLIENT, 0)


@dataclass
class Frontend:
    """One haproxy frontend: ``port`` on :data:`BALANCER`, to ``backend_port`` on
    127.0.0.1 with ``send`` (``send-proxy`` or ``send-proxy-v2``)."""

    port: int
    backend_port: int
    send: str = "send-proxy-v2"


class Haproxy:
    def __init__(self, workdir: Path, frontends: list[Frontend]) -> None:
        assert shutil.which(HAPROXY) or Path(HAPROXY).exists(), "haproxy: see .ci/setup"
        self.workdir = workdir
        self.frontends = frontends
        self.config_path = workdir / "haproxy.cfg"
        self.log_path = workdir / "haproxy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        lines = [
            "global",
            "    maxconn 200",
            "defaults",
            "    mode tcp",
            "    timeout connect 5s",
            "    timeout client 30s",
            "    timeout server 30s",
        ]
        for i, frontend in enumerate(self.frontends):
            lines += [
                f"frontend edge{i}",
                f"    bind {BALANCER}:{frontend.port}",
                f"    default_backend relay{i}",
                f"backend relay{i}",
                f"    server mta 127.0.0.1:{frontend.backend_port} {frontend.send}",
            ]
        return "\n".join(lines) + "\n"

    def start(self) -> Haproxy:
        self.config_path.write_text(self.config())
        with open(self.log_path, "ab") as log:
            # -db: stay in the foreground, so that the test owns the process
            self.proc = subprocess.Popen(
                [HAPROXY, "-db", "-f", str(self.config_path)], stdout=log, stderr=log
            )
        deadline = time.monotonic() + 10
        while not all(_listening(BALANCER, f.port) for f in self.frontends):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"haproxy did not start: {self.log_path.read_text()}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _listening(host: str, port: int) -> bool:
    """Whether a socket listens on host:port, read from /proc (a probe connection would
    reach the relay through haproxy and show up in what the test looks at)."""
    wanted = f"{socket.inet_aton(host)[::-1].hex().upper()}:{port:04X}"
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[1] == wanted and fields[3] == "0A":  # 0A: LISTEN
                return True
    return False
