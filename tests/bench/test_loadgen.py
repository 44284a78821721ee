"""The benchmark tools themselves: the load generator, the private Postfix, the result writer.

The load generator runs as people run it (``python -m bench.loadgen ... --json``) against a
real ``mta serve``; the Postfix instance really starts (CI installs Postfix and runs as
root), relays one smtplib message to smtp-sink and stops without leaving a process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import smtplib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bench import postfix
from bench.procs import tree
from bench.report import write_results
from bench.run import summarize
from bench.scenarios import Load
from bench.sink import Sink, smtp_sink_available
from tests.helpers import REPO, MtaProcess, wait_until

DISCARD = {"routes": {"bench.test": "discard"}}  # accepted mail goes nowhere


def loadgen(port: int, *args: str) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", f"127.0.0.1:{port}", "--json", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.stdout, done.stderr
    return json.loads(done.stdout)


def test_loadgen_sends_200_messages_over_10_sessions(
    mta_factory: Callable[..., MtaProcess],
) -> None:
    server = mta_factory(DISCARD)
    report = loadgen(server.port, "-s", "10", "-m", "200", "--size", "2k", "--timeout", "60")
    assert report["mode"] == "send"
    assert (report["ok"], report["failed"], report["errors"]) == (200, 0, {})
    assert report["connections"] == 10  # many messages per connection
    assert report["bytes"] == 200 * 2048
    assert report["elapsed"] > 0 and report["msgs_per_s"] > 0 and report["mb_per_s"] > 0
    lat = report["latency_ms"]
    assert lat["count"] == 200  # samples of every process merged
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"] < 60_000
    assert report["processes"] >= 1 and report["cpu_seconds"] > 0


def test_loadgen_one_message_per_connection_without_pipelining(
    mta_factory: Callable[..., MtaProcess],
) -> None:
    server = mta_factory(DISCARD)
    report = loadgen(
        server.port, "-s", "4", "-m", "40", "--per-connection", "1", "--no-pipelining", "-P", "2"
    )
    assert (report["ok"], report["failed"]) == (40, 0)
    assert report["connections"] == 40
    assert report["processes"] == 2


def test_loadgen_counts_refused_connections_as_errors() -> None:
    from bench.procs import free_port

    report = loadgen(free_port(), "-s", "2", "-m", "4", "--timeout", "30")
    assert (report["ok"], report["failed"]) == (0, 4)
    assert report["errors"] == {"connect ECONNREFUSED": 4}


def test_loadgen_hold_mode_keeps_idle_sessions(mta_factory: Callable[..., MtaProcess]) -> None:
    server = mta_factory(DISCARD)
    report = loadgen(server.port, "--hold", "50", "--hold-seconds", "1", "-P", "2")
    assert report["mode"] == "hold"
    assert report["established"] == report["still_open"] == 50
    assert report["greeting_ms"]["count"] >= 1 and report["greeting_ms"]["p50"] > 0


@pytest.mark.skipif(not smtp_sink_available(), reason="smtp-sink (Debian package postfix)")
def test_private_postfix_relays_to_smtp_sink(tmp_path: Path) -> None:
    ok, why = postfix.available()
    if not ok:
        pytest.skip(why)
    sink = Sink("smtp-sink").start()
    instance = postfix.PostfixInstance(sink.port)
    try:
        instance.start()
        master = instance.master_pid()
        assert master and len(instance.pids()) > 1
        assert instance.version()
        with smtplib.SMTP("127.0.0.1", instance.port, timeout=30) as client:
            refused = client.sendmail(
                "a@bench.test", ["b@bench.test"], b"Subject: t\r\n\r\nhello\r\n"
            )
        assert refused == {}
        assert sink.wait_for(1, timeout=60) is not None, instance.log()[-2000:]
        assert instance.wait_empty(timeout=30)
        # each process writes its log lines a moment after logging them (mta/logs.py)
        wait_until(lambda: "status=sent" in instance.log(), timeout=10)
    finally:
        instance.stop()
        sink.stop()
    assert not postfix.alive(tree(master))  # a zombie waiting for init is gone
    assert not instance.root.exists()


def _fake_runs(rate: float) -> list[dict[str, Any]]:
    run = {
        "ok": 100,
        "failed": 0,
        "errors": {},
        "accept_msgs_per_s": rate,
        "e2e_msgs_per_s": rate / 2,
        "mb_per_s": 1.0,
        "latency_ms": {"p50": 1.0, "p90": 2.0, "p99": 3.0, "max": 4.0},
        "generator_cpu_s": 0.1,
        "cpu_accept_s": 0.2,
        "cpu_e2e_s": 0.3,
    }
    return [dict(run, accept_msgs_per_s=rate + d) for d in (-10, 0, 10)]


def test_result_writer(tmp_path: Path) -> None:
    load = Load(1024, 50, 0, 100)
    rows = summarize(load, {"mta": _fake_runs(1000.0), "postfix": _fake_runs(500.0)})
    assert [r["scenario"] for r in rows] == ["accept", "e2e"]
    assert rows[0]["systems"]["mta"]["msgs_per_s"] == 1000.0  # the median of three
    assert rows[0]["ratio"] == 2.0
    results = {"header": {"date": "today"}, "throughput": rows}
    paths = write_results(results, tmp_path)
    text = paths["md"].read_text()
    assert "| accept | 1 KiB, 50 sess, many/conn | 1,000.0 | 500.0 | 2.00x |" in text
    assert json.loads(paths["json"].read_text())["throughput"][0]["ratio"] == 2.0
    if importlib.util.find_spec("matplotlib") is not None:
        assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "msgs_per_s.png" in text
    else:
        assert "png" not in paths


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "one_at_a_time"])
def test_loadgen_bdat_mode_sends_each_message_as_one_counted_chunk(
    sink_factory: Callable[..., Any], pipelining: bool
) -> None:
    sink = sink_factory()
    sink.chunking = True
    sink.pipelining = pipelining
    report = loadgen(sink.port, "-s", "2", "-m", "6", "--size", "1k", "--bdat", "-P", "1")
    assert (report["ok"], report["failed"], report["errors"]) == (6, 0, {})
    got = sink.wait_for(6)
    assert all(m.chunks == [len(m.data)] and b"\r\n.\r\n" not in m.data for m in got)
    assert all(len(m.data) >= 1024 and m.data.endswith(b"\r\n") for m in got)
    assert "DATA" not in sink.lines
