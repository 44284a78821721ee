"""Fixtures shared by every test package."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.delivery.sink import CaptureSink
from tests.helpers import MtaProcess, stop_all


@pytest.fixture
def mta_factory(tmp_path: Path) -> Iterator[Callable[..., MtaProcess]]:
    """Start ``mta serve`` subprocesses; every one is stopped (or killed) afterwards."""
    started: list[MtaProcess] = []

    def start(overrides: dict[str, Any] | None = None, wait: bool = True) -> MtaProcess:
        workdir = tmp_path / f"mta{len(started)}"
        workdir.mkdir()
        server = MtaProcess(workdir, overrides)
        started.append(server)
        return server.start(wait=wait)

    yield start
    stop_all(started)


@pytest.fixture
def mta(mta_factory: Callable[..., MtaProcess]) -> MtaProcess:
    """One running relay with default settings (1 smtpd worker)."""
    return mta_factory()


@pytest.fixture
def sink_factory() -> Iterator[Callable[..., CaptureSink]]:
    """Start CaptureSinks (with CaptureSink's arguments: tls=True, lmtp=True, ...); each is
    stopped after the test."""
    started: list[CaptureSink] = []

    def start(*args: Any, **kwargs: Any) -> CaptureSink:
        started.append(CaptureSink(*args, **kwargs).start())
        return started[-1]

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture
def sink(sink_factory: Callable[..., CaptureSink]) -> CaptureSink:
    """A capture sink (plain SMTP) on a free loopback port: the next hop of most relay tests."""
    return sink_factory()
