"""systemd's readiness protocol (mta/master/sd_notify.py): the datagrams themselves, and
READY / RELOADING / STOPPING from a real ``mta serve`` tree at a test ``$NOTIFY_SOCKET``."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mta.master import sd_notify
from tests.helpers import MtaProcess


def _notify_socket(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[socket.socket]:
    """A datagram socket as systemd's ``$NOTIFY_SOCKET``: a path, or ``@name`` (abstract)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if kind == "path":
        address = str(tmp_path / "notify")
        sock.bind(address)
    else:
        name = f"mta-test-notify-{os.getpid()}-{id(sock)}"
        sock.bind("\0" + name)
        address = "@" + name
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    sock.settimeout(20)
    yield sock
    sock.close()


@pytest.fixture(params=["path", "abstract"])
def notify_socket(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[socket.socket]:
    yield from _notify_socket(request.param, tmp_path, monkeypatch)


@pytest.fixture
def systemd_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """What systemd gives a service: an abstract socket, these days."""
    yield from _notify_socket("abstract", tmp_path, monkeypatch)


def _next(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.splitlines())


def test_notify_without_a_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify.notify("READY=1") is False


def test_notify_sends_one_datagram(notify_socket: socket.socket) -> None:
    assert sd_notify.notify("RELOADING=1", sd_notify.monotonic_usec())
    fields = _next(notify_socket)
    assert fields["RELOADING"] == "1"
    assert abs(int(fields["MONOTONIC_USEC"]) / 1e6 - __import__("time").monotonic()) < 5


def test_ready_reloading_stopping_from_a_real_tree(
    mta_factory: Callable[..., MtaProcess], systemd_socket: socket.socket
) -> None:
    notify_socket = systemd_socket
    server = mta_factory(wait=False)
    ready = _next(notify_socket)
    assert ready["READY"] == "1" and "ready" in ready["STATUS"]
    # READY=1 comes once every child is up: the listener answers by then
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as client:
        assert client.recv(100).startswith(b"220 ")
    server.signal(signal.SIGHUP)
    reloading = _next(notify_socket)
    assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0
    reloaded = _next(notify_socket)
    assert reloaded["READY"] == "1" and "reloaded" in reloaded["STATUS"]
    server.signal(signal.SIGTERM)
    assert _next(notify_socket)["STOPPING"] == "1"
    assert server.proc is not None and server.proc.wait(30) == 0
