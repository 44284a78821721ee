"""Fixtures of the interop tests: private Postfix instances and wire taps, stopped after
each test (see tests/interop/postfix_instance.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.interop.postfix_instance import InteropPostfix, WireTap, start_postfix


@pytest.fixture
def postfix_factory() -> Iterator[Callable[..., InteropPostfix]]:
    """``postfix_factory(relayhost, main={...}, verbose=True)``: a started private Postfix
    relaying everything to ``relayhost`` ("host:port"); the test is skipped where Postfix
    cannot run."""
    started: list[InteropPostfix] = []

    def start(relayhost: str, **options: object) -> InteropPostfix:
        started.append(start_postfix(relayhost, **options))
        return started[-1]

    yield start
    for instance in started:
        instance.stop()


@pytest.fixture
def tap_factory() -> Iterator[Callable[[int], WireTap]]:
    """``tap_factory(port)``: a WireTap in front of 127.0.0.1:port, closed after the test."""
    taps: list[WireTap] = []

    def start(port: int) -> WireTap:
        taps.append(WireTap(port))
        return taps[-1]

    yield start
    for tap in taps:
        tap.close()
