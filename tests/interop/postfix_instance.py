"""A private Debian Postfix for interop tests, and a wire tap to put in front of a server.

:class:`InteropPostfix` is the benchmark's private instance (``bench.postfix``: its own
config, queue and log under a temporary folder, nothing chrooted, on loopback only) with
what interop tests need on top:

* ``relayhost``: where it sends everything (our ``mta serve``, or a capture sink);
* ``main``: more ``main.cf`` lines (``{"smtpd_discard_ehlo_keywords": "chunking"}``);
* ``verbose``: its smtpd runs with ``-v`` (master.cf), so that every command a client
  sends is in its log as ``< client[ip]: COMMAND`` (a BDAT, a ``MAIL ... RET=HDRS``);
* :meth:`InteropPostfix.wait_log` waits for a pattern in its log.

The ``postfix_factory`` fixture of ``tests/interop/conftest.py`` starts them (stopped after
the test) and skips the test when Postfix cannot run here (not installed, not root).

:class:`WireTap` is a TCP proxy on 127.0.0.1 that forwards both ways and records what the
client sent and what the server answered, so a test can see the commands and octets as
they were on the wire whatever either side logs.  It runs in a thread; ``close()`` ends it.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path

import pytest

from bench.postfix import PostfixInstance, available

__all__ = ["InteropPostfix", "WireTap", "start_postfix"]


class InteropPostfix(PostfixInstance):
    """A private Postfix relaying everything to ``relayhost`` (``host:port``)."""

    def __init__(
        self,
        relayhost: str,
        *,
        main: dict[str, str] | None = None,
        verbose: bool = True,
        base: Path | None = None,
    ) -> None:
        host, _, port = relayhost.rpartition(":")
        super().__init__(sink_port=int(port), process_limit=20, concurrency=4, base=base)
        self.relay_host = host
        self.main = dict(main or {})
        self.verbose = verbose

    def write_config(self) -> None:
        super().write_config()
        main = self.conf / "main.cf"
        text = main.read_text().replace(
            f"relayhost = [127.0.0.1]:{self.sink_port}",
            f"relayhost = [{self.relay_host}]:{self.sink_port}",
        )
        # a queued message is retried soon, not after Postfix's minutes of backoff
        extra = {"minimal_backoff_time": "2s", "maximal_backoff_time": "4s"}
        extra["queue_run_delay"] = "2s"
        extra.update(self.main)
        text += "".join(f"{key} = {value}\n" for key, value in extra.items())
        main.write_text(text)

    def _master_cf(self) -> str:
        text = super()._master_cf()
        if self.verbose:  # the first line is our smtpd service
            first, _, rest = text.partition("\n")
            text = first + " -v\n" + rest
        return text

    def wait_log(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """The first match of ``pattern`` in the log, waiting for it to be written."""
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.log(), re.M)
            if match:
                return match
            if time.monotonic() > deadline:
                tail = "\n".join(self.log().splitlines()[-30:])
                raise AssertionError(f"{pattern!r} not in Postfix's log; its end:\n{tail}")
            time.sleep(0.05)


def start_postfix(relayhost: str, **options: object) -> InteropPostfix:
    """A started :class:`InteropPostfix`, or the test skipped when none can run here."""
    ok, why = available()
    if not ok:
        pytest.skip(why)
    return InteropPostfix(relayhost, **options).start()  # type: ignore[arg-type]


class WireTap:
    """A TCP proxy 127.0.0.1:port -> ``target``: what clients sent is in :attr:`sent`."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._sent = bytearray()
        self._answered = bytearray()
        self._sockets: list[socket.socket] = [self._listener]
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def sent(self) -> bytes:
        """Every byte clients sent through the tap so far, connections concatenated."""
        with self._lock:
            return bytes(self._sent)

    @property
    def answered(self) -> bytes:
        """Every byte the server sent back through the tap so far."""
        with self._lock:
            return bytes(self._answered)

    def wait_for(self, pattern: bytes, timeout: float = 20.0) -> re.Match[bytes]:
        deadline = time.monotonic() + timeout
        while not (match := re.search(pattern, self.sent)):
            assert time.monotonic() < deadline, f"{pattern!r} never went through the tap"
            time.sleep(0.02)
        return match

    def close(self) -> None:
        for sock in list(self._sockets):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        self._thread.join(timeout=5)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target, timeout=10)
            server.settimeout(None)
            self._sockets += [client, server]
            for src, dst, record in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pump, args=(src, dst, record), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, record: bool) -> None:
        try:
            while data := src.recv(65536):
                with self._lock:
                    (self._sent if record else self._answered).extend(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
