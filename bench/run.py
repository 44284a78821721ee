"""Measure mta against Postfix on this machine, in one command: ``python -m bench``.

Scenarios (``--scenarios``, default all):

* ``accept`` and ``e2e`` — the load matrix (sizes x sessions x messages per connection;
  ``--quick`` runs a subset), each load run for both systems, A/B interleaved (the order
  flips every repetition), ``--runs`` times (median reported).  One run gives both
  figures: accept = first connect → last ``250``; e2e = first connect → the sink counted
  every message.  Plus the same first load driven by Postfix's smtp-source as a neutral
  cross-check of the load generator.
* ``connections`` — ``--hold-sessions`` idle sessions held ``--hold-seconds`` against a fresh
  instance of each system: tree RSS/PSS and new-session greeting time.
* ``parser`` — the Cython DATA scanner against its pure-Python twin.

Results go to ``bench/results/<date>/`` (results.md, results.json, msgs_per_s.png).  Every
process started is stopped at the end, on errors and on TERM/INT too; every run has a
timeout.  Postfix missing (or not root) → the Postfix side is skipped with a message.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # ``python bench/run.py``: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import smtp_source
from bench.parser_bench import run_parser_bench
from bench.report import write_results
from bench.scenarios import Load, connections_run, throughput_run
from bench.stats import median
from bench.systems import System, available, stop_all

__all__ = ["build_loads", "main", "run_benchmarks"]

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = ("accept", "connections", "parser")  # "e2e" comes with every accept run
BASE_MESSAGES = {1024: 4000, 10 * 1024: 3000, 100 * 1024: 800}


def say(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# ----- what to run --------------------------------------------------------------------------


def messages_for(size: int, sessions: int, per_connection: int, scale: float) -> int:
    """Enough messages for a run of a few seconds at the rates seen on a small VM."""
    base = BASE_MESSAGES.get(size, max(200, int(4_000_000 / size)))
    if per_connection == 1:
        base //= 2
    if sessions == 1:
        base //= 4
    return max(50, int(base * scale))


def build_loads(args: argparse.Namespace) -> list[Load]:
    if args.quick:
        shapes = [(1024, 50, 0), (100 * 1024, 50, 0), (1024, 10, 1)]
    else:
        shapes = [
            (size, sessions, per_connection)
            for size in args.sizes
            for sessions in args.sessions
            for per_connection in args.per_connection
        ]
    loads = [Load(s, n, c, messages_for(s, n, c, args.scale)) for s, n, c in shapes]
    if args.smtp_source and smtp_source.available() and loads:
        first = loads[0]
        loads.append(
            Load(
                first.size,
                first.sessions,
                first.per_connection,
                first.messages,
                generator="smtp-source",
            )
        )
    return loads


# ----- throughput ---------------------------------------------------------------------------


def _safe_run(system: System, load: Load, extra: list[str]) -> dict[str, Any]:
    try:
        run = throughput_run(system, load, extra)
    except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as exc:
        run = {"error": f"{type(exc).__name__}: {exc}"}
    if "error" in run and not system.alive():
        run["log"] = system.log_tail()
        system.restart()
    return run


def _describe(run: dict[str, Any]) -> str:
    if "accept_msgs_per_s" not in run:
        return f"FAILED: {run.get('error')}"
    text = f"accept {run['accept_msgs_per_s']:.0f} msgs/s"
    if "e2e_msgs_per_s" in run:
        text += f", e2e {run['e2e_msgs_per_s']:.0f} msgs/s"
    if run.get("latency_ms"):
        text += f", p99 {run['latency_ms']['p99']:.1f} ms"
    return text + (f"  ({run['error']})" if "error" in run else "")


def throughput(systems: dict[str, System], loads: list[Load], args) -> list[dict[str, Any]]:
    extra = ["--no-pipelining"] if args.no_pipelining else []
    if args.starttls:
        extra.append("--starttls")
    rows: list[dict[str, Any]] = []
    raw: list[dict[str, Any]] = []
    for number, load in enumerate(loads, 1):
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in systems}
        for rep in range(args.runs):
            order = list(systems) if rep % 2 == 0 else list(reversed(systems))
            for name in order:
                run = _safe_run(systems[name], load, extra)
                runs[name].append(run)
                say(f"[{number}/{len(loads)}] {load.label} {name} run {rep + 1}: {_describe(run)}")
                time.sleep(args.pause)
        raw.append({"load": load.label, "messages": load.messages, "runs": runs})
        rows += summarize(load, runs)
    args.raw_runs = raw
    return rows


def _per_message_ms(run: dict[str, Any], key: str) -> float:
    return run[key] / max(run["ok"], 1) * 1000.0


def _summary(runs: list[dict[str, Any]], scenario: str) -> dict[str, Any]:
    rate = "accept_msgs_per_s" if scenario == "accept" else "e2e_msgs_per_s"
    cpu = "cpu_accept_s" if scenario == "accept" else "cpu_e2e_s"
    good = [r for r in runs if rate in r and not r.get("failed")]
    errors = [r["error"] for r in runs if "error" in r]
    if not good:
        return {"errors": errors}
    summary = {
        "msgs_per_s": round(median(r[rate] for r in good), 1),
        "runs_msgs_per_s": [r[rate] for r in good],
        "cpu_ms_per_msg": round(median(_per_message_ms(r, cpu) for r in good), 3),
        "generator_cpu_ms_per_msg": round(
            median(_per_message_ms(r, "generator_cpu_s") for r in good), 3
        ),
        "mb_per_s": round(median(r["mb_per_s"] for r in good), 2),
        "errors": errors,
    }
    latencies = [r["latency_ms"] for r in good if r.get("latency_ms")]
    if latencies:
        summary["p50_ms"] = round(median(lat["p50"] for lat in latencies), 2)
        summary["p99_ms"] = round(median(lat["p99"] for lat in latencies), 2)
    return summary


def summarize(load: Load, runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for scenario in ("accept", "e2e"):
        per_system = {name: _summary(r, scenario) for name, r in runs.items()}
        row: dict[str, Any] = {
            "scenario": scenario,
            "load": load.label,
            "generator": load.generator,
            "messages": load.messages,
            "systems": per_system,
        }
        mta = per_system.get("mta", {}).get("msgs_per_s")
        pfx = per_system.get("postfix", {}).get("msgs_per_s")
        if mta and pfx:
            row["ratio"] = round(mta / pfx, 2)
        rows.append(row)
    return rows


# ----- the other scenarios --------------------------------------------------------------------


def connections(names: list[str], args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for rep in range(args.connection_runs):
        order = names if rep % 2 == 0 else list(reversed(names))
        for name in order:
            say(f"connections: {name} holding {args.hold_sessions} sessions (run {rep + 1})")
            try:
                run = connections_run(name, args.hold_sessions, args.hold_seconds, args.sink)
            except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                run = {"error": f"{type(exc).__name__}: {exc}"}
            runs[name].append(run)
            say(f"connections: {name}: " + _describe_hold(run))
    result = {}
    for name, lst in runs.items():
        good = sorted((r for r in lst if "error" not in r), key=lambda r: r["pss_per_session_kb"])
        result[name] = good[len(good) // 2] if good else lst[-1]
        result[name]["runs"] = len(lst)
    return result


def _describe_hold(run: dict[str, Any]) -> str:
    if "error" in run:
        return f"FAILED: {run['error']}"
    mb = 1024 * 1024
    return (
        f"{run['established']} held, RSS {run['held']['rss'] / mb:,.0f} MB, "
        f"PSS {run['held']['pss'] / mb:,.0f} MB, greeting p50 {run['greeting_ms']['p50']} ms"
    )


# ----- header -------------------------------------------------------------------------------


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def header(systems: dict[str, System], args: argparse.Namespace) -> dict[str, Any]:
    import uvloop

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    dirty = " (with uncommitted changes)" if _git("status", "--porcelain", "mta") else ""
    head = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} CPUs ({_cpu_model()}), {mem:.1f} GiB RAM, "
        f"kernel {platform.release()}",
        "load average at start": Path("/proc/loadavg").read_text().split()[:3],
        "python": f"{platform.python_version()}, uvloop {uvloop.__version__}",
        "mta": f"{_mta_version()} at {_git('rev-parse', '--short', 'HEAD') or '?'}{dirty}",
        "postfix": _postfix_version(systems) or args.no_postfix,
        "sink": args.sink,
        "runs per load": args.runs,
        "command": " ".join(["python -m bench", *args.argv]),
    }
    return head


def _postfix_version(systems: dict[str, System]) -> str:
    if "postfix" in systems:
        return systems["postfix"].version()
    if available("postfix")[0]:
        out = subprocess.run(
            ["/usr/sbin/postconf", "-d", "-h", "mail_version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return out.stdout.strip()
    return ""


def _mta_version() -> str:
    sys.path.insert(0, str(REPO))
    try:
        import mta

        return mta.__version__
    except ImportError:
        return "unknown"


# ----- main ---------------------------------------------------------------------------------


def _raise_nofile() -> None:
    """Children (the relays, the generator) inherit this: 10,000 sessions need the fds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _on_term(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through every finally: nothing is left running


def run_benchmarks(args: argparse.Namespace) -> dict[str, Any]:
    names = ["mta", "postfix"]
    ok, why = available("postfix")
    args.no_postfix = "" if ok else f"skipped: {why}"
    if not ok:
        say(f"Postfix side skipped: {why}")
        names.remove("postfix")
    results: dict[str, Any] = {}
    systems: dict[str, System] = {}
    try:
        if "accept" in args.scenarios:
            systems = {name: System(name, args.sink).start() for name in names}
            results["header"] = header(systems, args)
            _warm_up(systems)
            results["throughput"] = throughput(systems, build_loads(args), args)
            results["runs"] = args.raw_runs
        else:
            results["header"] = header({}, args)
    finally:
        stop_all()
    if "connections" in args.scenarios:
        results["connections"] = connections(names, args)
    if "parser" in args.scenarios:
        say("parser: C vs Python DataScanner")
        results["parser"] = run_parser_bench(seconds=args.parser_seconds)
    results["header"]["load average at end"] = Path("/proc/loadavg").read_text().split()[:3]
    return results


def _warm_up(systems: dict[str, System]) -> None:
    """A small unmeasured load first: Postfix spawns its processes, caches fill."""
    warm = Load(1024, 10, 0, 300)
    for name, system in systems.items():
        run = _safe_run(system, warm, [])
        say(f"warm-up {name}: {_describe(run)}")


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="3 loads, 1 connections run")
    p.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help="comma list of accept (with e2e), connections, parser",
    )
    p.add_argument("--runs", type=int, default=3, help="repetitions per load and system")
    p.add_argument("--sizes", default="1k,10k,100k", help="message sizes of the matrix")
    p.add_argument("--sessions", default="1,10,50", help="concurrent sessions of the matrix")
    p.add_argument(
        "--per-connection", default="0,1", help="messages per connection of the matrix (0 = many)"
    )
    p.add_argument("--scale", type=float, default=1.0, help="multiply the message counts")
    p.add_argument(
        "--no-smtp-source",
        dest="smtp_source",
        action="store_false",
        help="skip the smtp-source cross-check load",
    )
    p.add_argument("--no-pipelining", action="store_true")
    p.add_argument("--starttls", action="store_true", help="loadgen uses STARTTLS")
    p.add_argument("--hold-sessions", type=int, default=0, help="default 10000 (quick: 2000)")
    p.add_argument("--hold-seconds", type=float, default=0, help="default 30 (quick: 15)")
    p.add_argument("--connection-runs", type=int, default=0, help="default --runs (quick: 1)")
    p.add_argument("--parser-seconds", type=float, default=3.0)
    p.add_argument("--sink", choices=("smtp-sink", "python"), default="smtp-sink")
    p.add_argument("--pause", type=float, default=1.0, help="seconds between runs")
    p.add_argument("--out", type=Path, help="results folder (default bench/results/DATE)")
    args = p.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(args.scenarios) - {*SCENARIOS, "e2e"}
    if unknown:
        p.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    if "e2e" in args.scenarios and "accept" not in args.scenarios:
        args.scenarios.append("accept")
    from bench.loadgen import parse_sizes

    args.sizes = [size for size, _ in parse_sizes(args.sizes)]
    args.sessions = [int(n) for n in args.sessions.split(",")]
    args.per_connection = [int(n) for n in args.per_connection.split(",")]
    args.hold_sessions = args.hold_sessions or (2000 if args.quick else 10000)
    args.hold_seconds = args.hold_seconds or (15.0 if args.quick else 30.0)
    args.connection_runs = args.connection_runs or (1 if args.quick else args.runs)
    return args


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    _raise_nofile()
    signal.signal(signal.SIGTERM, _on_term)
    started = time.monotonic()
    results = run_benchmarks(args)
    results["header"]["duration"] = f"{time.monotonic() - started:.0f} s"
    out = args.out or REPO / "bench" / "results" / datetime.date.today().isoformat()
    paths = write_results(results, out)
    say("results: " + ", ".join(str(p) for p in paths.values()))
    print(paths["md"].read_text())
    failed = any(
        data.get("errors")
        for row in results.get("throughput", [])
        for data in row["systems"].values()
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
