"""The systems under test, each with its own counting sink: ``mta`` and ``postfix``.

A :class:`System` pairs one relay instance with the sink it relays to and gives the
scenarios one interface: its address, the pids of its process tree (for CPU and memory),
the sink's count, waiting for an empty queue, and restarting after a failed run.  Every
system started is registered with :func:`atexit`, so that an exception or a TERM anywhere in
the runner never leaves a relay, a Postfix or a sink behind.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
from typing import Any

from bench import postfix
from bench.mta_instance import MtaInstance
from bench.postfix import PostfixInstance
from bench.procs import cpu_seconds
from bench.sink import Sink

__all__ = ["System", "stop_all"]

log = logging.getLogger("bench")
_running: list[System] = []


class System:
    """``name`` is ``"mta"`` or ``"postfix"``; ``options`` go to the instance."""

    def __init__(self, name: str, sink_kind: str = "smtp-sink", **options: Any) -> None:
        if name not in ("mta", "postfix"):
            raise ValueError(f"unknown system {name!r}")
        self.name = name
        self.sink_kind = sink_kind
        self.options = options
        self.sink: Sink | None = None
        self.instance: MtaInstance | PostfixInstance | None = None

    def start(self) -> System:
        _running.append(self)
        self.sink = Sink(self.sink_kind).start()
        if self.name == "mta":
            self.instance = MtaInstance(self.sink.port, overrides=self.options.get("overrides"))
        else:
            self.instance = PostfixInstance(
                self.sink.port,
                smtpd_process_limit=self.options.get("smtpd_process_limit", 0),
                smtpd_timeout=self.options.get("smtpd_timeout", 300),
            )
        self.instance.start()
        return self

    @property
    def address(self) -> str:
        assert self.instance is not None
        return self.instance.address

    def pids(self) -> list[int]:
        return self.instance.pids() if self.instance is not None else []

    def cpu(self) -> float:
        return cpu_seconds(self.pids())

    def sink_cpu(self) -> float:
        if self.sink is None or self.sink.proc is None:
            return 0.0
        return cpu_seconds([self.sink.proc.pid])

    def alive(self) -> bool:
        return bool(self.pids())

    def queued(self) -> int:
        return self.instance.queued() if self.instance is not None else 0

    def wait_empty(self, timeout: float) -> bool:
        return self.instance.wait_empty(timeout) if self.instance is not None else True

    def version(self) -> str:
        return self.instance.version() if self.instance is not None else ""

    def log_tail(self, lines: int = 20) -> str:
        if self.instance is None:
            return ""
        return "\n".join(self.instance.log().splitlines()[-lines:])

    def restart(self) -> None:
        log.warning("%s: restarting after a failed run", self.name)
        self.stop()
        self.start()

    def stop(self) -> None:
        if self.instance is not None:
            with contextlib.suppress(Exception):
                self.instance.stop()
            self.instance = None
        if self.sink is not None:
            self.sink.stop()
            self.sink = None
        if self in _running:
            _running.remove(self)


def available(name: str) -> tuple[bool, str]:
    if name == "postfix":
        return postfix.available()
    return True, ""


def stop_all() -> None:
    for system in list(_running):
        system.stop()


atexit.register(stop_all)
