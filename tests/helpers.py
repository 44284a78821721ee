"""Shared helpers for tests that run real mta processes on loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mta.queue.spool import Spool

REPO = Path(__file__).resolve().parent.parent
# Every process writes a line when it logs it (mta/logs.py), but many tests read the log
# right after a client's last step, before the relay has acted on it: log() reads once the
# file has stopped growing for LOG_SETTLE, or has grown all along for LOG_BUSY.
LOG_SETTLE = 0.2
LOG_BUSY = 5 * LOG_SETTLE
QUEUE_STATES = ("incoming", "active", "deferred", "hold", "corrupt")  # where messages wait


_HANDED_OUT: set[int] = set()  # ports free_port gave this process: never twice


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, and not one this process was given before: the
    kernel may hand the same ephemeral port to two back-to-back probes, and a relay given
    it for SMTP and metrics then fails to start (seen in CI)."""
    while True:
        with socket.socket() as s:
            s.bind((host, 0))
            port: int = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def to_toml(data: dict[str, Any], prefix: str = "") -> str:
    """A tiny TOML writer for test configs (tables, nested tables such as
    ``[listeners.submission]``, strings, numbers, bools, lists)."""
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    lines = [f"{_key(k)} = {_value(v)}" for k, v in scalars.items()]
    for name, table in tables.items():
        path = f"{prefix}{_key(name)}"
        lines.append(f"[{path}]")
        lines.append(to_toml(table, prefix=f"{path}.").rstrip("\n"))
    return "\n".join(line for line in lines if line) + "\n"


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(value)


def wait_for_port(host: str, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1) as s:
                s.settimeout(2)
                if s.recv(1024).startswith(b"220"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"nothing answers on {host}:{port}")


class MtaProcess:
    """``mta serve`` as a subprocess with its own config, spool and ports."""

    def __init__(
        self,
        workdir: Path,
        overrides: dict[str, Any] | None = None,
        python: list[str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.python = python or [sys.executable]  # how to run Python (a wrapper may come first)
        self.port = free_port()
        self.metrics_port = free_port()
        self.spool = workdir / "spool"
        config: dict[str, Any] = {
            "hostname": "mx.test",
            "smtp": {"listen": [f"127.0.0.1:{self.port}"], "workers": 1},
            "queue": {"path": str(self.spool)},
            "metrics": {"listen": f"127.0.0.1:{self.metrics_port}"},
            # Children keep root like the test, so that they reach a spool under pytest's
            # tmp_path (its parents are 0700 root); tests/master/test_privileges.py runs
            # them as an unprivileged account, with a spool that account can reach.
            "master": {"graceful_timeout": 10, "user": "root", "allow_root": True},
        }
        for key, value in (overrides or {}).items():
            if isinstance(value, dict):
                config.setdefault(key, {}).update(value)
            else:
                config[key] = value
        self.config = config
        self.config_path = workdir / "mta.toml"
        self.log_path = workdir / "mta.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self, config: dict[str, Any] | None = None) -> None:
        self.config_path.write_text(to_toml(config or self.config))

    def start(self, wait: bool = True) -> MtaProcess:
        self.write_config()
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*self.python, "-m", "mta", "--config", str(self.config_path), "serve"],
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        if wait:
            wait_for_port("127.0.0.1", self.port)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        """The log so far, read once the file has stopped growing for a little while, or
        has grown all along for a while (see LOG_SETTLE)."""
        if not self.log_path.exists():
            return ""
        deadline = time.monotonic() + LOG_BUSY
        size = -1
        while (now := self.log_path.stat().st_size) != size and time.monotonic() < deadline:
            size = now
            time.sleep(LOG_SETTLE)
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> int:
        """TERM and wait; return the exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_tree()
            raise

    def kill_tree(self) -> None:
        """kill -9 the master and every child (a crash of the whole machine, minus the disk)."""
        if self.proc is None:
            return
        for pid in [*child_pids(self.proc.pid), self.proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)

    def files(self, state: str) -> list[Path]:
        d = self.spool / state
        return sorted(p for p in d.iterdir() if not p.name.startswith(".")) if d.exists() else []

    def segment_messages(self) -> list[str]:
        """Queue IDs of the small messages in segments that are not done yet."""
        return [ref.queue_id for ref in Spool(str(self.spool)).segment_messages()]

    def queue_empty(self, states: tuple[str, ...] = QUEUE_STATES) -> bool:
        """No message left in a segment nor in any of ``states``."""
        # segments first: a message there may be copied into active/ while we look
        return not self.segment_messages() and not any(self.files(s) for s in states)


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"condition not met within {timeout}s")


class RawClient:
    """A raw SMTP client over a socket: send exact bytes, read replies."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.greeting = self.reply()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> bytes:
        """One complete (possibly multi-line) reply, CRLFs included."""
        lines = []
        while True:
            line = self._line()
            lines.append(line)
            if len(line) < 4 or line[3:4] != b"-":
                return b"".join(lines)

    def replies(self, n: int) -> list[bytes]:
        return [self.reply() for _ in range(n)]

    def cmd(self, line: bytes) -> bytes:
        self.send(line + b"\r\n")
        return self.reply()

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed by server; partial: {self.buf!r}")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line + b"\r\n"

    def closed_by_server(self, timeout: float = 5.0) -> bool:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, TimeoutError):
            return False

    def close(self) -> None:
        self.sock.close()


def stop_all(servers: list[MtaProcess]) -> None:
    """Teardown of relays a test started: TERM and wait, else kill whatever is left."""
    for server in servers:
        try:
            server.stop(timeout=20)
        except Exception:  # noqa: BLE001  -- teardown must kill whatever is left
            server.kill_tree()
