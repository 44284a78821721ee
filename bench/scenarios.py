"""The benchmark scenarios: one measured run of one load against one system.

* :func:`throughput_run` — a load (size, sessions, messages per connection) from the
  load generator or from smtp-source.  One run yields two measurements of the same load:
  **accept** (first connect → last ``250``; the relay delivers to its sink meanwhile) and
  **end-to-end** (first connect → the sink has counted every accepted message), with the
  CPU seconds of the relay's process tree over each span and of the generator.
* :func:`connections_run` — a fresh instance holds ``sessions`` idle sessions (after EHLO)
  for ``hold_seconds``: the RSS/PSS of its process tree before and while holding, and how
  long a *new* session waits for its greeting meanwhile.

Everything is bounded in time; a failure is recorded in the run (``"error"``), never hidden.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.procs import memory
from bench.smtp_source import run_smtp_source
from bench.systems import System

__all__ = ["Load", "connections_run", "throughput_run"]

REPO = Path(__file__).resolve().parent.parent
DRAIN_TIMEOUT = 120.0  # seconds for a relay to deliver what it accepted
IDLE_TIMEOUT = 3600.0  # seconds, both systems, in the idle-sessions scenario


@dataclass(frozen=True)
class Load:
    size: int  # bytes per message
    sessions: int
    per_connection: int  # 0 = many (the session's whole share), 1 = one per connection
    messages: int
    generator: str = "loadgen"  # or "smtp-source"

    @property
    def label(self) -> str:
        size = f"{self.size // 1024} KiB" if self.size % 1024 == 0 else f"{self.size} B"
        conn = "many/conn" if self.per_connection == 0 else f"{self.per_connection}/conn"
        gen = "" if self.generator == "loadgen" else f", {self.generator}"
        return f"{size}, {self.sessions} sess, {conn}{gen}"

    @property
    def timeout(self) -> float:
        """Generous bound for one run: 60 s plus 20 ms a message (50 msgs/s at worst)."""
        return 60.0 + self.messages * 0.02


def _loadgen(address: str, load: Load, extra: list[str], timeout: float) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.loadgen", address, "--json", "--no-progress"]
    argv += ["-s", str(load.sessions), "-m", str(load.messages), "--size", str(load.size)]
    argv += ["--per-connection", str(load.per_connection), "--timeout", str(timeout), *extra]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout + 60, env=env, check=False
    )
    if not done.stdout.strip():
        raise RuntimeError(f"loadgen produced no report: {done.stderr.strip()[-800:]}")
    return json.loads(done.stdout)


def _generate(system: System, load: Load, extra: list[str]) -> dict[str, Any]:
    if load.generator == "smtp-source":
        return run_smtp_source(
            system.address,
            load.sessions,
            load.messages,
            load.size,
            reuse=load.per_connection != 1,
            timeout=load.timeout,
        )
    return _loadgen(system.address, load, extra, load.timeout)


def throughput_run(system: System, load: Load, extra: list[str] | None = None) -> dict[str, Any]:
    """One run of ``load`` against ``system``; accept and end-to-end figures together."""
    if not system.wait_empty(DRAIN_TIMEOUT):
        return {"error": f"queue not empty before the run ({system.queued()} left)"}
    assert system.sink is not None
    base = system.sink.count
    cpu0, sink0 = system.cpu(), system.sink_cpu()
    report = _generate(system, load, extra or [])
    cpu_accept = system.cpu()
    ok = report["ok"]
    reached = system.sink.wait_for(base + ok, DRAIN_TIMEOUT) if ok else None
    cpu_e2e = system.cpu()
    run: dict[str, Any] = {
        "ok": ok,
        "failed": report["failed"],
        "errors": report["errors"],
        "accept_s": report["elapsed"],
        "accept_msgs_per_s": report["msgs_per_s"],
        "mb_per_s": report["mb_per_s"],
        "latency_ms": report.get("latency_ms"),
        "generator_cpu_s": report["cpu_seconds"],
        "cpu_accept_s": round(cpu_accept - cpu0, 3),
        "cpu_e2e_s": round(cpu_e2e - cpu0, 3),
        "sink_cpu_s": round(system.sink_cpu() - sink0, 3),
        "delivered": system.sink.count - base,
    }
    if reached is None:
        run["error"] = f"sink got {run['delivered']} of {ok} within {DRAIN_TIMEOUT:.0f}s"
    else:
        e2e = max(reached - report["start"], 1e-9)
        run["e2e_s"] = round(e2e, 4)
        run["e2e_msgs_per_s"] = round(ok / e2e, 1)
    if report["failed"]:
        run["error"] = f"{report['failed']} of {load.messages} messages failed: {report['errors']}"
    return run


# ----- idle sessions -----------------------------------------------------------------------


def connections_run(name: str, sessions: int, hold_seconds: float, sink_kind: str):
    """Start a fresh ``name`` system, hold ``sessions`` idle sessions, measure, stop it."""
    # Both idle timeouts (300 s by default) are raised to IDLE_TIMEOUT: Postfix needs minutes
    # to fork 10,000 smtpd processes, and its first sessions must not time out meanwhile.
    if name == "mta":
        # per smtpd worker: every worker may get most of them from the shared socket
        smtp = {"max_connections": sessions + 1000, "idle_timeout": IDLE_TIMEOUT}
        options: dict[str, Any] = {"overrides": {"smtp": smtp}}
    else:  # one smtpd process per session
        options = {"smtpd_process_limit": sessions + 100, "smtpd_timeout": int(IDLE_TIMEOUT)}
    system = System(name, sink_kind, **options).start()
    try:
        return _hold(system, sessions, hold_seconds)
    finally:
        system.stop()


def _hold(system: System, sessions: int, hold_seconds: float) -> dict[str, Any]:
    time.sleep(1.0)  # let the fresh tree settle before the baseline
    base = memory(system.pids())
    setup_timeout = 120.0 + sessions * 0.1  # Postfix forks one smtpd per session
    ready = Path(tempfile.mkdtemp(prefix="bench-hold-")) / "ready"
    argv = [sys.executable, "-m", "bench.loadgen", system.address, "--json", "--no-progress"]
    argv += ["--hold", str(sessions), "--hold-seconds", str(hold_seconds)]
    argv += ["--ready-file", str(ready), "--io-timeout", str(setup_timeout)]
    argv += ["--timeout", str(setup_timeout + hold_seconds + 60)]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    cpu0 = system.cpu()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        peak = _sample_while_held(system, proc, ready, setup_timeout, hold_seconds)
        out, err = proc.communicate(timeout=hold_seconds + 120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        ready.unlink(missing_ok=True)
        ready.parent.rmdir()
    if not out.strip():
        return {"error": f"loadgen produced no report: {err.decode(errors='replace')[-800:]}"}
    report = json.loads(out)
    held = max(report["established"], 1)
    return {
        "sessions": sessions,
        "established": report["established"],
        "still_open": report["still_open"],
        "setup_s": report["setup_seconds"],
        "greeting_ms": report["greeting_ms"],
        "probe_errors": report["probe_errors"],
        "errors": report["errors"],
        "base": base,
        "held": peak,
        "rss_per_session_kb": round((peak["rss"] - base["rss"]) / held / 1024, 1),
        "pss_per_session_kb": round((peak["pss"] - base["pss"]) / held / 1024, 1),
        "cpu_s": round(system.cpu() - cpu0, 3),
        "generator_cpu_s": report["cpu_seconds"],
    }


def _sample_while_held(
    system: System, proc: subprocess.Popen[bytes], ready: Path, setup: float, hold: float
) -> dict[str, int]:
    """Wait for the ready file, then sample the tree's memory during the hold; the peak."""
    deadline = time.monotonic() + setup + 30
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            return memory(system.pids())
        time.sleep(0.2)
    peak = {"rss": 0, "pss": 0, "processes": 0}
    end = time.monotonic() + max(hold - 1.0, 0.5)
    while time.monotonic() < end and proc.poll() is None:
        sample = memory(system.pids())
        if sample["rss"] > peak["rss"]:
            peak = sample
        time.sleep(min(2.0, hold / 4))
    return peak
