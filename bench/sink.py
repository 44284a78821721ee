"""The next hop of both relays: a discarding SMTP server that counts what it receives.

Two implementations, one interface (:class:`Sink`):

* ``smtp-sink`` — Postfix's C test server, ``smtp-sink -u nobody -c -m 1000
  127.0.0.1:PORT 1000``.  With ``-c`` it prints ``\\rsess=N quit=N mesg=N`` to stdout each
  time a session ends or a ``.`` is received, unbuffered; a reader thread parses the last
  ``mesg=`` and notes when it changed.  This is the default: it costs almost no CPU.
* ``python`` — this module run as ``python -m bench.sink PORT`` (uvloop): the same output
  format, for machines without Postfix.

Both were checked for exact counts (see bench/README.md, "Which sink").  A run waits for
``baseline + N`` messages with :meth:`Sink.wait_for`, which returns the monotonic time the
count was reached, so end-to-end time is measured on the same clock as the load generator's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.procs import free_port, stop_process, wait_for_greeting

__all__ = ["Sink", "smtp_sink_available"]

_MESG = re.compile(rb"mesg=(\d+)")
SMTP_SINK = "/usr/sbin/smtp-sink"


def smtp_sink_available() -> bool:
    return os.access(SMTP_SINK, os.X_OK) or shutil.which("smtp-sink") is not None


class Sink:
    """A counting SMTP sink on 127.0.0.1 (``kind`` = ``"smtp-sink"`` or ``"python"``)."""

    def __init__(self, kind: str = "smtp-sink", port: int = 0) -> None:
        if kind not in ("smtp-sink", "python"):
            raise ValueError(f"sink kind must be smtp-sink or python, not {kind!r}")
        self.kind = kind
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._count = 0
        self._changed = threading.Condition()
        self._reached: list[tuple[int, float]] = []  # (count, monotonic time) at each change
        self._reader: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Sink:
        self.proc = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=_env(),
        )
        self._reader = threading.Thread(target=self._read, name="sink-reader", daemon=True)
        self._reader.start()
        try:
            wait_for_greeting("127.0.0.1", self.port, timeout=15)
        except TimeoutError:
            self.stop()
            raise
        return self

    def _command(self) -> list[str]:
        if self.kind == "python":
            return [sys.executable, "-m", "bench.sink", str(self.port)]
        binary = SMTP_SINK if os.access(SMTP_SINK, os.X_OK) else "smtp-sink"
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        return [binary, *user, "-c", "-m", "1000", self.address, "1000"]

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        tail = b""
        while chunk := os.read(fd, 65536):
            tail = (tail + chunk)[-256:]
            found = _MESG.findall(tail)
            if found:
                self._set(int(found[-1]))

    def _set(self, count: int) -> None:
        with self._changed:
            if count != self._count:
                self._count = count
                self._reached.append((count, time.monotonic()))
                self._changed.notify_all()

    @property
    def count(self) -> int:
        with self._changed:
            return self._count

    def wait_for(self, target: int, timeout: float) -> float | None:
        """Block until ``target`` messages arrived; the monotonic time it happened, or None."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._count < target:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc is None or self.proc.poll() is not None:
                    return None
                self._changed.wait(min(left, 0.5))
            return next(t for count, t in self._reached if count >= target)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=5)
        if self._reader is not None:
            self._reader.join(2)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


# ----- the Python sink (``python -m bench.sink PORT``) ---------------------------------


class _SinkProtocol(asyncio.Protocol):
    """Accepts everything, discards it, counts messages (RFC 5321 replies, PIPELINING)."""

    counter = [0]
    report: list[asyncio.Handle | None] = [None]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = b""
        self.in_data = self.quitting = False
        transport.write(b"220 bench-sink ESMTP\r\n")  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        out = []
        while True:
            if self.in_data:
                end = buf.find(b"\r\n.\r\n")
                if end < 0:
                    self.buf = buf[-4:]
                    break
                buf = buf[end + 5 :]
                self.in_data = False
                out.append(b"250 2.0.0 Ok: queued\r\n")
                self._count()
                continue
            end = buf.find(b"\r\n")
            if end < 0:
                self.buf = buf
                break
            line, buf = buf[:end], buf[end + 2 :]
            out.append(self._reply(line[:4].upper()))
            if self.quitting:
                break
            if self.in_data:
                buf = b"\r\n" + buf  # the CRLF ending DATA starts the first line
        if out:
            self.transport.write(b"".join(out))
        if self.quitting:
            self.transport.close()

    def _reply(self, verb: bytes) -> bytes:
        if verb == b"EHLO":
            return b"250-bench-sink\r\n250-PIPELINING\r\n250-SIZE 104857600\r\n250 8BITMIME\r\n"
        if verb == b"DATA":
            self.in_data = True
            return b"354 End data with <CR><LF>.<CR><LF>\r\n"
        if verb == b"QUIT":
            self.quitting = True
            return b"221 2.0.0 Bye\r\n"
        return b"250 2.0.0 Ok\r\n"

    def _count(self) -> None:
        self.counter[0] += 1
        if self.report[0] is None:  # one line per loop iteration, not per message
            self.report[0] = asyncio.get_running_loop().call_soon(_print_count, self)


def _print_count(protocol: _SinkProtocol) -> None:
    protocol.report[0] = None
    sys.stdout.buffer.write(b"\rsess=0 quit=0 mesg=%d" % protocol.counter[0])
    sys.stdout.buffer.flush()


async def _serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_SinkProtocol, "127.0.0.1", port, backlog=1000)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    import uvloop

    args = argv if argv is not None else sys.argv[1:]
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(_serve(int(args[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
