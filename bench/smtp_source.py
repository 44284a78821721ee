"""Postfix's ``smtp-source`` as a second, neutral load generator.

``smtp-source -s SESSIONS -m MESSAGES -l SIZE -f a@bench.test -t b@bench.test [-d] [-N]
HOST:PORT``: ``-d`` keeps each session's connection for its next message (without it every
message gets its own connection), ``-N`` prepends a sequence number to each recipient (so
Postfix's address caches miss, as with real mail).  ``-l`` is the body length; smtp-source
adds a few header lines.  It does not pipeline and aborts at the first unexpected reply,
so a zero exit status means every message got its ``250``.

It is timed from start to exit (the process start-up, a few milliseconds, is included) and
its CPU time comes from ``wait4``'s rusage.  Usage:
``python -m bench.smtp_source 127.0.0.1:2525 -s 50 -m 10000 -l 1024 --json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from typing import Any

__all__ = ["available", "run_smtp_source"]

SMTP_SOURCE = "/usr/sbin/smtp-source"


def available() -> bool:
    return os.access(SMTP_SOURCE, os.X_OK) or shutil.which("smtp-source") is not None


def command(
    address: str,
    sessions: int,
    messages: int,
    size: int,
    reuse: bool = True,
    distinct_recipients: bool = False,
) -> list[str]:
    binary = SMTP_SOURCE if os.access(SMTP_SOURCE, os.X_OK) else "smtp-source"
    argv = [binary, "-s", str(sessions), "-m", str(messages), "-l", str(size)]
    argv += ["-f", "a@bench.test", "-t", "b@bench.test", "-M", "source.bench.test"]
    if reuse:
        argv.append("-d")
    if distinct_recipients:
        argv.append("-N")
    return [*argv, address]


def run_smtp_source(
    address: str,
    sessions: int,
    messages: int,
    size: int,
    reuse: bool = True,
    distinct_recipients: bool = False,
    timeout: float = 600.0,
) -> dict[str, Any]:
    """Run smtp-source once; msgs/s is ``messages / elapsed`` when it exits with 0."""
    argv = command(address, sessions, messages, size, reuse, distinct_recipients)
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        assert proc.stderr is not None
        errors = proc.stderr.read().decode(errors="replace")
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
    end = time.monotonic()
    proc.returncode = os.waitstatus_to_exitcode(status)
    elapsed = max(end - start, 1e-9)
    ok = messages if proc.returncode == 0 else 0
    return {
        "mode": "smtp-source",
        "command": argv,
        "messages": messages,
        "ok": ok,
        "failed": messages - ok,
        "returncode": proc.returncode,
        "timed_out": elapsed >= timeout,
        "start": start,
        "end": end,
        "elapsed": round(elapsed, 4),
        "msgs_per_s": round(ok / elapsed, 1),
        "mb_per_s": round(ok * size / elapsed / 1e6, 2),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 3),
        "errors": {"smtp-source": errors.strip()[-500:]} if proc.returncode else {},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.smtp_source", description=__doc__)
    p.add_argument("target", metavar="HOST:PORT")
    p.add_argument("-s", "--sessions", type=int, default=10)
    p.add_argument("-m", "--messages", type=int, default=1000)
    p.add_argument("-l", "--size", type=int, default=1024)
    p.add_argument("--one-per-connection", action="store_true", help="omit -d")
    p.add_argument("-N", "--distinct-recipients", action="store_true")
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if not available():
        print("smtp-source is not installed (Debian package postfix)", file=sys.stderr)
        return 2
    report = run_smtp_source(
        args.target,
        args.sessions,
        args.messages,
        args.size,
        reuse=not args.one_per_connection,
        distinct_recipients=args.distinct_recipients,
        timeout=args.timeout,
    )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"{report['ok']}/{report['messages']} messages in {report['elapsed']} s: "
            f"{report['msgs_per_s']} msgs/s (exit status {report['returncode']})"
        )
    return 0 if report["returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
