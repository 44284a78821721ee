"""SMTP load generator: N processes, each running many concurrent sessions on uvloop.

Two modes:

* **send** (default): ``--messages`` messages over ``--sessions`` concurrent sessions, with
  ``--per-connection`` messages per connection (0 = as many as the session gets), with or
  without PIPELINING (MAIL, RCPT and DATA in one write, RFC 2920), optionally after
  STARTTLS, and with DATA or (``--bdat``, to a server that offers CHUNKING) ``BDAT n LAST``
  (RFC 3030: the message in one chunk, no terminator, pipelined with MAIL and RCPT).  It
  reports msgs/s and MB/s over the time from the first connect to the last
  ``250`` after end-of-data, the latency of that final reply (from handing the last byte to
  the transport to reading the reply) as p50/p90/p99/max over the merged samples of all
  processes, and the failures counted by stage and reply code.
* **hold**: open ``--hold`` sessions (greeting + EHLO), keep them idle for
  ``--hold-seconds`` and meanwhile time how long a *new* session waits for its greeting.

The processes start together behind a barrier so that their start-up is not measured, and
every run is bounded in time (``--timeout``; each reply by ``--io-timeout``).  Each process
raises its RLIMIT_NOFILE to what its share of the sessions needs.

Usage: ``python -m bench.loadgen 127.0.0.1:2525 --sessions 50 --messages 10000 --json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import multiprocessing as mp
import os
import random
import resource
import signal
import socket
import ssl
import sys
import time
from array import array
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import uvloop

from bench.smtpclient import Connection, SmtpError, build_message, open_session
from bench.stats import latency_summary

__all__ = ["LoadSpec", "main", "parse_sizes", "run_load"]

_CONNECT_CONCURRENCY = 256  # hold mode: handshakes in flight per process


@dataclass
class LoadSpec:
    host: str = "127.0.0.1"
    port: int = 2525
    sessions: int = 10
    messages: int = 1000
    sizes: list[tuple[int, float]] = field(default_factory=lambda: [(1024, 1.0)])
    per_connection: int = 0  # 0 = unlimited (the session's whole share on one connection)
    pipelining: bool = True
    starttls: bool = False
    bdat: bool = False  # BDAT n LAST instead of DATA (RFC 3030), when CHUNKING is offered
    processes: int = 0  # 0 = min(cpu count, sessions)
    sender: str = "a@bench.test"
    recipient: str = "b@bench.test"
    helo: str = "loadgen.bench.test"
    timeout: float = 600.0  # the whole run
    io_timeout: float = 60.0  # one transaction or handshake
    hold: int = 0  # hold mode: idle sessions to keep open
    hold_seconds: float = 30.0
    probe_interval: float = 0.5
    ready_file: str = ""  # hold mode: written once every session is established
    seed: int = 1

    def process_count(self) -> int:
        wanted = self.processes or min(os.cpu_count() or 1, 8)
        return max(1, min(wanted, self.hold or self.sessions))


def parse_sizes(text: str) -> list[tuple[int, float]]:
    """``"1024"`` or a mix ``"1k:70,10k:20,100k:10"`` (size[:weight], k = KiB, m = MiB)."""
    mix = []
    for item in text.split(","):
        size_text, _, weight = item.strip().partition(":")
        mix.append((_bytes(size_text), float(weight or 1)))
    if not mix or any(size < 1 or weight <= 0 for size, weight in mix):
        raise ValueError(f"bad size mix {text!r}")
    return mix


def _bytes(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 1024, "m": 1024 * 1024}.get(text[-1:], 1)
    return int(float(text.rstrip("km")) * scale)


# ----- one generator process ---------------------------------------------------------------


def _raise_nofile(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        with contextlib.suppress(ValueError, OSError):  # only root may raise the hard limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            return
        needed = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def _die_with_parent() -> None:
    """A generator whose parent was killed (a runner's timeout) must not linger."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class _Sender:
    """The sessions of one process in send mode, sharing one message budget."""

    def __init__(self, spec: LoadSpec, slot: int, sessions: int, messages: int, progress: Any):
        self.spec, self.slot, self.sessions = spec, slot, sessions
        self.remaining = messages
        self.progress = progress
        self.rng = random.Random(spec.seed * 1000 + slot)
        self.bodies = [
            build_message(size, spec.sender, spec.recipient, spec.seed) for size, _ in spec.sizes
        ]
        self.weights = [w for _, w in spec.sizes]
        self.tls = _client_tls() if spec.starttls else None
        self.latencies = array("d")
        self.errors: Counter[str] = Counter()
        self.ok = self.bytes = self.connections = self.sent = 0
        self.first = self.last = 0.0

    async def run(self) -> dict[str, Any]:
        self.first = time.monotonic()
        try:
            async with asyncio.timeout(self.spec.timeout):
                await asyncio.gather(*(self._session() for _ in range(self.sessions)))
        except TimeoutError:  # report what was done; the rest counts as failed
            self.errors["run timeout"] += self.remaining + (self.sent - self.ok - self._failed())
        return {
            "ok": self.ok,
            "failed": self.sent - self.ok,
            "bytes": self.bytes,
            "connections": self.connections,
            "first": self.first,
            "last": self.last or time.monotonic(),
            "errors": dict(self.errors),
            "latencies": self.latencies.tobytes(),
        }

    def _take(self) -> bool:
        if self.remaining <= 0:
            return False
        self.remaining -= 1
        self.sent += 1
        return True

    async def _session(self) -> None:
        spec = self.spec
        while self._take():  # the message is ours before we connect: no idle connections
            try:
                async with asyncio.timeout(spec.io_timeout):
                    conn = await open_session(spec.host, spec.port, spec.helo, self.tls)
            except (SmtpError, TimeoutError) as exc:
                self._fail(exc)  # the message that never got a session counts as failed
                await asyncio.sleep(0.01)  # a refused connection must not spin the loop
                continue
            self.connections += 1
            try:
                await self._send_on(conn)
            finally:
                conn.close()

    async def _send_on(self, conn: Connection) -> None:
        """Send the message already taken, then more while the connection may carry them."""
        per_connection = self.spec.per_connection
        done = 0
        while True:
            done += 1
            try:
                async with asyncio.timeout(self.spec.io_timeout):
                    await self._transaction(conn)
            except (SmtpError, TimeoutError) as exc:
                self._fail(exc)
                if not isinstance(exc, SmtpError) or exc.fatal:
                    return
                with contextlib.suppress(SmtpError, TimeoutError):
                    async with asyncio.timeout(self.spec.io_timeout):
                        await conn.command(b"RSET\r\n", "RSET", 250)
            if (per_connection and done >= per_connection) or not self._take():
                return

    def _fail(self, exc: BaseException) -> None:
        self.errors[exc.label if isinstance(exc, SmtpError) else "timeout"] += 1

    def _failed(self) -> int:
        return sum(self.errors.values())

    async def _transaction(self, conn: Connection) -> None:
        spec = self.spec
        index = 0
        if len(self.bodies) > 1:
            index = self.rng.choices(range(len(self.bodies)), self.weights)[0]
        head, rest = self.bodies[index]
        size = spec.sizes[index][0]
        mail = b"MAIL FROM:<%s>" % spec.sender.encode()
        if "SIZE" in conn.extensions:
            mail += b" SIZE=%d" % size
        rcpt = b"RCPT TO:<%s>\r\n" % spec.recipient.encode()
        if spec.bdat:
            await self._bdat(conn, mail + b"\r\n" + rcpt, head, rest, size)
            return
        if spec.pipelining and conn.pipelining:
            conn.write(mail + b"\r\n" + rcpt + b"DATA\r\n")
            codes = [code for code, _ in await conn.protocol.wait_replies(3)]
            _check(codes, ("MAIL", 250), ("RCPT", 250), ("DATA", 354))
        else:
            await conn.command(mail + b"\r\n", "MAIL", 250)
            await conn.command(rcpt, "RCPT", 250)
            await conn.command(b"DATA\r\n", "DATA", 354)
        conn.write(head + self._message_id() + rest)
        await conn.protocol.drain()
        started = time.monotonic()
        ((code, _),) = await conn.protocol.wait_replies(1)
        if code != 250:
            raise SmtpError(f"end-of-data {code}", fatal=code in (0, 421))
        self._done(started, size)

    def _message_id(self) -> bytes:
        return b"Message-ID: <%06d.%07d@bench.test>\r\n" % (
            os.getpid() % 1_000_000,
            self.sent % 10_000_000,
        )

    async def _bdat(
        self, conn: Connection, envelope: bytes, head: bytes, rest: bytes, size: int
    ) -> None:
        """MAIL, RCPT and ``BDAT n LAST`` with the message (no dot-stuffing: the bench's
        lines never start with a dot; no terminator); pipelined when offered."""
        if "CHUNKING" not in conn.extensions:
            raise SmtpError("CHUNKING not offered")
        message = head + self._message_id() + rest[:-3]  # without the ".\r\n" of DATA
        chunk = b"BDAT %d LAST\r\n" % len(message) + message
        if self.spec.pipelining and conn.pipelining:
            conn.write(envelope + chunk)
        else:
            mail, rcpt = envelope.split(b"\r\n", 1)
            await conn.command(mail + b"\r\n", "MAIL", 250)
            await conn.command(rcpt, "RCPT", 250)
            conn.write(chunk)
        await conn.protocol.drain()
        started = time.monotonic()
        count = 3 if self.spec.pipelining and conn.pipelining else 1
        codes = [code for code, _ in await conn.protocol.wait_replies(count)]
        stages = [("MAIL", 250), ("RCPT", 250), ("BDAT", 250)][-count:]
        _check(codes, *stages)
        self._done(started, size)

    def _done(self, started: float, size: int) -> None:
        """The final 250 came: count the message and its latency."""
        now = time.monotonic()
        self.latencies.append(now - started)
        self.last = now
        self.ok += 1
        self.bytes += size
        self.progress[self.slot] = self.ok


def _check(codes: list[int], *expected: tuple[str, int]) -> None:
    for code, (stage, want) in zip(codes, expected, strict=True):
        if code != want:
            # 354 after a refused MAIL/RCPT would leave the server in DATA: say so, give up
            raise SmtpError(f"{stage} {code}", fatal=True)


def _client_tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # benchmark peers use throwaway certificates
    return context


class _Holder:
    """Hold mode: open ``sessions`` idle sessions, keep them until released."""

    def __init__(self, spec: LoadSpec, slot: int, sessions: int, progress: Any, release: Any):
        self.spec, self.slot, self.sessions = spec, slot, sessions
        self.progress, self.release = progress, release
        self.tls = _client_tls() if spec.starttls else None
        self.errors: Counter[str] = Counter()
        self.conns: list[Connection] = []

    async def run(self) -> dict[str, Any]:
        gate = asyncio.Semaphore(_CONNECT_CONCURRENCY)
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.spec.timeout):
                await asyncio.gather(*(self._open(gate) for _ in range(self.sessions)))
        except TimeoutError:
            self.errors["run timeout"] += (
                self.sessions - len(self.conns) - sum(self.errors.values())
            )
        established = time.monotonic()
        self.progress[self.slot] = -len(self.conns) - 1  # negative = this process is done
        deadline = established + self.spec.hold_seconds + self.spec.timeout
        while not self.release.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        still_open = sum(1 for c in self.conns if c.protocol.lost is None)
        for conn in self.conns:
            conn.close(quit_first=False)
        await asyncio.sleep(0.1)
        return {
            "established": len(self.conns),
            "still_open": still_open,
            "setup_seconds": established - started,
            "errors": dict(self.errors),
        }

    async def _open(self, gate: asyncio.Semaphore) -> None:
        spec = self.spec
        async with gate:
            try:
                async with asyncio.timeout(spec.io_timeout):
                    conn = await open_session(spec.host, spec.port, spec.helo, self.tls)
            except (SmtpError, TimeoutError) as exc:
                self.errors[exc.label if isinstance(exc, SmtpError) else "timeout"] += 1
                return
        self.conns.append(conn)
        self.progress[self.slot] = len(self.conns)


def _worker(
    spec: LoadSpec,
    slot: int,
    share: tuple[int, int],
    progress: Any,
    barrier: Any,
    release: Any,
    conn: Any,
) -> None:
    """Entry point of one generator process; sends its result dict through ``conn``."""
    _die_with_parent()
    sessions, messages = share
    _raise_nofile(sessions + 64)
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        if spec.hold:
            job: _Sender | _Holder = _Holder(spec, slot, sessions, progress, release)
        else:
            job = _Sender(spec, slot, sessions, messages, progress)
        barrier.wait(60)
        conn.send(loop.run_until_complete(job.run()))  # bounded by spec.timeout inside
    except BaseException as exc:  # noqa: BLE001 -- the parent reports it; never hang it
        conn.send({"crash": f"{type(exc).__name__}: {exc}"})
    finally:
        loop.close()


# ----- the parent: starts the processes, merges their results ------------------------------


def _shares(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def run_load(spec: LoadSpec, progress_out: Any = None) -> dict[str, Any]:
    """Run one load and return the merged report (see the module docstring)."""
    nproc = spec.process_count()
    sessions = _shares(spec.hold or spec.sessions, nproc)
    messages = _shares(spec.messages, nproc) if not spec.hold else [0] * nproc
    # a process's message budget follows its share of the sessions
    ctx = mp.get_context("spawn")
    progress = ctx.Array("q", nproc, lock=False)
    barrier, release = ctx.Barrier(nproc + 1), ctx.Event()
    pipes = [ctx.Pipe(duplex=False) for _ in range(nproc)]
    procs = [
        ctx.Process(
            target=_worker,
            args=(spec, i, (sessions[i], messages[i]), progress, barrier, release, pipes[i][1]),
            daemon=True,
        )
        for i in range(nproc)
    ]
    _raise_nofile(64 + 4 * nproc)
    cpu_before = _rusage_cpu()
    probes: dict[str, Any] = {}
    try:
        for proc in procs:
            proc.start()
        barrier.wait(120)
        if spec.hold:
            probes = _hold_phase(spec, progress, nproc, progress_out)
            release.set()
        results = _collect(spec, pipes, progress, progress_out)
    finally:
        release.set()
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
    report = _merge_hold(spec, results, probes) if spec.hold else _merge_send(spec, results)
    report["processes"] = nproc
    report["cpu_seconds"] = round(_rusage_cpu() - cpu_before, 3)
    return report


def _rusage_cpu() -> float:
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def _collect(spec: LoadSpec, pipes: list[Any], progress: Any, out: Any) -> list[dict[str, Any]]:
    deadline = time.monotonic() + spec.timeout + 30
    results: list[dict[str, Any] | None] = [None] * len(pipes)
    while any(r is None for r in results):
        if time.monotonic() > deadline:
            raise TimeoutError(f"load generator did not finish within {spec.timeout:.0f}s")
        for i, (reader, _) in enumerate(pipes):
            if results[i] is None and reader.poll(0.05):
                results[i] = reader.recv()
        _draw(out, spec, progress)
    if out is not None:
        out.write("\n")
    crashes = [r["crash"] for r in results if r and "crash" in r]
    if crashes:
        raise RuntimeError("load generator process failed: " + "; ".join(crashes))
    return [r for r in results if r is not None]


def _draw(out: Any, spec: LoadSpec, progress: Any) -> None:
    if out is None:
        return
    total = spec.hold or spec.messages
    done = sum(abs(v) - (1 if v < 0 else 0) for v in progress)
    width = 30
    filled = int(width * min(done, total) / max(total, 1))
    what = "sessions" if spec.hold else "messages"
    out.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {what}")
    out.flush()


def _hold_phase(spec: LoadSpec, progress: Any, nproc: int, out: Any) -> dict[str, Any]:
    """Wait until every process has its sessions up, then probe new sessions while held."""
    deadline = time.monotonic() + spec.timeout
    while sum(1 for v in progress if v < 0) < nproc:
        if time.monotonic() > deadline:
            raise TimeoutError("hold: sessions were not established in time")
        _draw(out, spec, progress)
        time.sleep(0.1)
    if spec.ready_file:
        Path(spec.ready_file).write_text(str(sum(-v - 1 for v in progress)))
    samples: list[float] = []
    errors: Counter[str] = Counter()
    end = time.monotonic() + spec.hold_seconds
    while time.monotonic() < end:
        try:
            samples.append(_probe(spec))
        except OSError as exc:
            errors[type(exc).__name__] += 1
        time.sleep(spec.probe_interval)
    return {"samples": samples, "errors": dict(errors)}


def _probe(spec: LoadSpec) -> float:
    """Seconds from connect() to a complete 220 greeting line for one new session."""
    started = time.monotonic()
    with socket.create_connection((spec.host, spec.port), timeout=spec.io_timeout) as sock:
        sock.settimeout(spec.io_timeout)
        data = b""
        while b"\n" not in data:
            chunk = sock.recv(1024)
            if not chunk:
                raise ConnectionResetError("closed before the greeting")
            data += chunk
        elapsed = time.monotonic() - started
        if not data.startswith(b"220"):
            raise ConnectionRefusedError(data[:3].decode("ascii", "replace"))
        with contextlib.suppress(OSError):
            sock.sendall(b"QUIT\r\n")
    return elapsed


def _merge_send(spec: LoadSpec, results: list[dict[str, Any]]) -> dict[str, Any]:
    latencies = array("d")
    errors: Counter[str] = Counter()
    for r in results:
        latencies.frombytes(r["latencies"])
        errors.update(r["errors"])
    ok = sum(r["ok"] for r in results)
    size = sum(r["bytes"] for r in results)
    first = min(r["first"] for r in results)
    last = max(r["last"] for r in results)
    elapsed = max(last - first, 1e-9)
    return {
        "mode": "send",
        "spec": _spec_dict(spec),
        "messages": spec.messages,
        "ok": ok,
        "failed": spec.messages - ok,
        "connections": sum(r["connections"] for r in results),
        "bytes": size,
        "start": first,
        "end": last,
        "elapsed": round(elapsed, 4),
        "msgs_per_s": round(ok / elapsed, 1),
        "mb_per_s": round(size / elapsed / 1e6, 2),
        "latency_ms": latency_summary(latencies),
        "errors": dict(errors),
    }


def _merge_hold(spec: LoadSpec, results: list[dict[str, Any]], probes: dict[str, Any]):
    errors: Counter[str] = Counter()
    for r in results:
        errors.update(r["errors"])
    return {
        "mode": "hold",
        "spec": _spec_dict(spec),
        "sessions": spec.hold,
        "established": sum(r["established"] for r in results),
        "still_open": sum(r["still_open"] for r in results),
        "setup_seconds": round(max(r["setup_seconds"] for r in results), 3),
        "greeting_ms": latency_summary(probes["samples"]),
        "probe_errors": probes["errors"],
        "errors": dict(errors),
    }


def _spec_dict(spec: LoadSpec) -> dict[str, Any]:
    data = asdict(spec)
    data["sizes"] = [list(pair) for pair in spec.sizes]
    return data


# ----- command line ------------------------------------------------------------------------


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n")[0])
    p.add_argument("target", metavar="HOST:PORT")
    p.add_argument("-s", "--sessions", type=int, default=10, help="concurrent sessions")
    p.add_argument("-m", "--messages", type=int, default=1000, help="messages in total")
    p.add_argument("--size", default="1k", help="bytes, or a mix: 1k:70,10k:20,100k:10")
    p.add_argument("--per-connection", type=int, default=0, help="per connection (0 = all)")
    p.add_argument("--no-pipelining", action="store_true", help="wait for every reply")
    p.add_argument("--starttls", action="store_true", help="STARTTLS before MAIL")
    p.add_argument("--bdat", action="store_true", help="BDAT n LAST instead of DATA (RFC 3030)")
    p.add_argument("-P", "--processes", type=int, default=0, help="generator processes")
    p.add_argument("--hold", type=int, default=0, help="hold mode: idle sessions to keep")
    p.add_argument("--hold-seconds", type=float, default=30.0)
    p.add_argument("--ready-file", default="", help="hold mode: written when all are up")
    p.add_argument("--timeout", type=float, default=600.0, help="bound on the whole run (s)")
    p.add_argument("--io-timeout", type=float, default=60.0, help="bound on one reply (s)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def spec_from_args(args: argparse.Namespace) -> LoadSpec:
    host, _, port = args.target.rpartition(":")
    return LoadSpec(
        host=host.strip("[]") or "127.0.0.1",
        port=int(port),
        sessions=args.sessions,
        messages=args.messages,
        sizes=parse_sizes(args.size),
        per_connection=args.per_connection,
        pipelining=not args.no_pipelining,
        starttls=args.starttls,
        bdat=args.bdat,
        processes=args.processes,
        hold=args.hold,
        hold_seconds=args.hold_seconds,
        ready_file=args.ready_file,
        timeout=args.timeout,
        io_timeout=args.io_timeout,
    )


def _print_human(report: dict[str, Any]) -> None:
    if report["mode"] == "hold":
        g = report["greeting_ms"]
        print(
            f"held {report['established']}/{report['sessions']} sessions "
            f"(set up in {report['setup_seconds']} s, {report['still_open']} still open)"
        )
        print(f"new-session greeting: p50 {g['p50']} ms  p99 {g['p99']} ms  max {g['max']} ms")
    else:
        lat = report["latency_ms"]
        print(
            f"{report['ok']}/{report['messages']} messages in {report['elapsed']} s: "
            f"{report['msgs_per_s']} msgs/s, {report['mb_per_s']} MB/s "
            f"over {report['connections']} connections"
        )
        print(
            f"end-of-data latency: p50 {lat['p50']} ms  p90 {lat['p90']} ms  "
            f"p99 {lat['p99']} ms  max {lat['max']} ms"
        )
    if report["errors"]:
        print("errors: " + ", ".join(f"{k}: {v}" for k, v in sorted(report["errors"].items())))
    print(f"generator: {report['processes']} processes, {report['cpu_seconds']} CPU s")


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    spec = spec_from_args(args)
    show = sys.stderr if sys.stderr.isatty() and not args.no_progress else None
    report = run_load(spec, show)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_human(report)
    failed = report.get("failed", 0) or (report.get("sessions", 0) - report.get("established", 0))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
