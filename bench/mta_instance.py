"""Our relay for the benchmarks: ``python -m mta serve`` with a temporary config and spool.

It listens on a free loopback port, relays everything to ``[127.0.0.1]:SINKPORT`` and keeps
the production defaults otherwise (smtpd workers = one per CPU, small messages in segments,
``delivery.min_backoff`` = 300 s, ``delivery.destination_concurrency`` = 20, like Postfix's
``default_destination_concurrency_limit``).  ``overrides`` change single keys, e.g.
``{"smtp": {"max_connections": 12000}}`` for the idle-session scenario.

The relay is started from this checkout (``PYTHONPATH``), so no install is needed; its log
(stderr) goes to ``mta.log`` in the folder.  :meth:`stop` sends TERM (the master drains)
and kills the whole tree if it does not exit in time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from bench.procs import free_port, stop_process, tree, wait_for_greeting
from mta.config import LimitsConfig
from mta.queue.spool import Spool

__all__ = ["MtaInstance"]

REPO = Path(__file__).resolve().parent.parent
_STATES = ("tmp", "incoming", "active", "deferred", "hold")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):  # an inline table, e.g. dkim.keys
        pairs = (f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{" + ", ".join(pairs) + "}"
    return repr(value)


def to_toml(config: dict[str, Any]) -> str:
    """Tables of scalars and lists: all a relay configuration needs."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in config.items() if not isinstance(v, dict)]
    for name, table in config.items():
        if isinstance(table, dict):
            lines.append(f"[{name}]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"


class MtaInstance:
    """One relay process tree; ``start()``/``stop()``, or use it as a context manager."""

    def __init__(
        self,
        sink_port: int,
        port: int = 0,
        overrides: dict[str, dict[str, Any]] | None = None,
        base: Path | None = None,
    ) -> None:
        self.port = port or free_port()
        self.root = Path(base or tempfile.mkdtemp(prefix="bench-mta-"))
        self.spool = self.root / "spool"
        self.config: dict[str, Any] = {
            "hostname": "mta.bench.test",
            "smtp": {"listen": [f"127.0.0.1:{self.port}"]},
            "queue": {"path": str(self.spool)},
            "delivery": {"relayhost": f"[127.0.0.1]:{sink_port}"},
            "metrics": {"listen": f"127.0.0.1:{free_port()}"},
            # children keep root: the spool is under a 0700 mkdtemp directory of root's
            "master": {"graceful_timeout": 10, "user": "root", "allow_root": True},
        }
        for section, values in (overrides or {}).items():
            self.config.setdefault(section, {}).update(values)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> MtaInstance:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 30) -> MtaInstance:
        self.root.mkdir(parents=True, exist_ok=True)
        config_path = self.root / "mta.toml"
        config_path.write_text(to_toml(self.config))
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        with open(self.root / "mta.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mta", "--config", str(config_path), "serve"],
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        try:
            wait_for_greeting("127.0.0.1", self.port, timeout=timeout)
            self._wait_children(timeout)
        except BaseException:
            self.stop(remove=False)
            raise
        return self

    def _wait_children(self, timeout: float) -> None:
        """The master answers before its queue manager and delivery agents are up."""
        wanted = 1 + (self.config["smtp"].get("workers") or os.cpu_count() or 1)
        wanted += 1 + self.config["delivery"].get("workers", 2)
        limits = msgspec.convert(self.config.get("limits", {}), LimitsConfig)
        wanted += 1 if limits.any_on else 0  # anvil
        deadline = time.monotonic() + timeout
        while len(self.pids()) < wanted and time.monotonic() < deadline:
            time.sleep(0.05)

    def pids(self) -> list[int]:
        return tree(self.proc.pid) if self.proc is not None else []

    def queued(self) -> int:
        """Messages not yet delivered (in segments, and files in tmp, incoming, active,
        deferred, hold)."""
        total = sum(1 for _ in Spool(str(self.spool)).segment_messages())
        for state in _STATES:
            try:
                total += sum(1 for n in os.listdir(self.spool / state) if not n.startswith("."))
            except FileNotFoundError:
                pass
        return total

    def wait_empty(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.queued() == 0:
                return True
            time.sleep(0.1)
        return False

    def version(self) -> str:
        out = subprocess.run(
            [sys.executable, "-c", "import mta; print(mta.__version__)"],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=30,
            check=False,
        )
        return out.stdout.strip() or "unknown"

    def log(self) -> str:
        path = self.root / "mta.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, timeout: float = 30, remove: bool = True) -> int | None:
        code = None
        if self.proc is not None:
            code = stop_process(self.proc, timeout)
            self.proc = None
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)
        return code
