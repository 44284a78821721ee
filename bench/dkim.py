"""The cost of DKIM signing: end-to-end msgs/s and CPU per message, unsigned against
RSA-2048 and Ed25519 signed, in the same run; and what one signature costs the delivery
agent's event loop.

``python -m bench.dkim`` does two things:

* **signature** (in process, no relay): the CPU of one :meth:`Signer.sign` per key type on
  the bench's 1 KiB message, and how the delivery agent's event loop fares while a burst of
  jobs is signed inline, in the agent's signing thread, by ``run_in_executor`` with one
  thread, or in a process: a 1 ms ticker's worst and p99
  lag (how long every other delivery on that loop waits) and the burst's signatures/s.
* **e2e**: three mta trees (each with its own sink), ``unsigned``, ``rsa`` and
  ``ed25519`` (the bench's ``From: <a@bench.test>`` signed with a key of that type), the
  same load (1 KiB, 50 sessions, many messages per connection) against each, interleaved
  (rotating the order), ``--runs`` times; the median end-to-end msgs/s (first connect to
  the sink's last message) and the relay tree's CPU ms per message, and the ratios to
  unsigned.  ``--mta-config FILE`` (TOML) is merged into every configuration.

``--only signature`` or ``--only e2e`` runs one part.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import tomllib
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # ``python bench/dkim.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec
import uvloop

from bench.edge import merge
from bench.scenarios import Load, throughput_run
from bench.smtpclient import build_message
from bench.stats import median, percentile
from bench.systems import System, stop_all
from mta.config import Config
from mta.delivery.sign_thread import SigningThread
from mta.delivery.signing import Signer, generate_key, load_signer

__all__ = ["compare", "signature_costs"]

KEY_TYPES = ("rsa", "ed25519")
DOMAIN = "bench.test"  # the load generator's From: <a@bench.test>
# inline: on the loop, as before; thread: the agent's SigningThread; executor: asyncio's
# run_in_executor with one thread; process: a one-process pool (the message pickled)
MODES = ("inline", "thread", "executor", "process")
TICK = 0.001  # seconds: the ticker standing for the loop's other deliveries


def say(text: str) -> None:
    print(f"[dkim {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def write_keys(directory: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """A key of each type for bench.test; the ``[dkim]`` section of each configuration."""
    sections = {}
    for key_type in KEY_TYPES:
        pem, _ = generate_key(key_type)
        path = directory / f"{DOMAIN}.{key_type}.key"
        path.write_bytes(pem)
        path.chmod(0o600)
        sections[key_type] = {"dkim": {"keys": {DOMAIN: {"selector": "b1", "key": str(path)}}}}
    return sections


def bench_message(size: int) -> bytes:
    head, rest = build_message(size, f"a@{DOMAIN}", "b@sink.test")
    return head + b"Message-ID: <000001.0000001@bench.test>\r\n" + rest[: -len(b".\r\n")]


# ----- one signature, and the event loop around it ---------------------------------------


def signature_costs(sections: dict[str, Any], size: int, burst: int) -> dict[str, Any]:
    message = bench_message(size)
    result: dict[str, Any] = {}
    for key_type in KEY_TYPES:
        signer = load_signer(msgspec.convert(sections[key_type], Config))
        assert signer is not None and signer.sign(message)
        cpu0, n = time.process_time(), 500
        for _ in range(n):
            signer.sign(message)
        figures: dict[str, Any] = {"cpu_ms": round((time.process_time() - cpu0) / n * 1e3, 3)}
        for mode in MODES:
            loop = uvloop.new_event_loop()  # as the delivery agent runs
            try:
                figures[mode] = loop.run_until_complete(_burst(signer, message, burst, mode))
            finally:
                loop.close()
        result[key_type] = figures
        say(f"{key_type}: {json.dumps(figures)}")
    return result


async def _burst(signer: Signer, message: bytes, count: int, mode: str) -> dict[str, float]:
    """``count`` jobs arrive at once, as the agent's tasks do from one read; each signs
    (``mode``) and then would send.  The ticker's lag meanwhile, and signatures/s."""
    loop = asyncio.get_running_loop()
    executor: Executor | None = None
    thread = SigningThread(signer.sign) if mode == "thread" else None
    if mode == "executor":
        executor = ThreadPoolExecutor(1)
    elif mode == "process":
        executor = ProcessPoolExecutor(1)
    lags: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            before = time.perf_counter()  # uvloop's loop.time() counts whole milliseconds
            await asyncio.sleep(TICK)
            lags.append(time.perf_counter() - before - TICK)

    async def job() -> None:
        if thread is not None:
            await thread.sign(message)
        elif executor is not None:
            await loop.run_in_executor(executor, signer.sign, message)
        else:
            signer.sign(message)

    try:
        await job()  # the thread or process started before measuring
        ticking = loop.create_task(ticker())
        await asyncio.sleep(0.05)
        lags.clear()
        start = time.perf_counter()
        await asyncio.gather(*(job() for _ in range(count)))
        elapsed = time.perf_counter() - start
        done.set()
        await ticking
    finally:
        if executor is not None:
            executor.shutdown()
        if thread is not None:
            thread.close()
    ordered = sorted(lags)
    return {
        "signatures_per_s": round(count / elapsed),
        "tick_lag_p99_ms": round(percentile(ordered, 0.99) * 1e3, 2),
        "tick_lag_max_ms": round(ordered[-1] * 1e3 if ordered else 0.0, 2),
    }


# ----- end to end --------------------------------------------------------------------------


def compare(
    load: Load, runs: int, sections: dict[str, Any], extra: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """``load`` against unsigned, RSA and Ed25519 relays, interleaved; medians and ratios."""
    systems = {"unsigned": System("mta", overrides=merge(extra))}
    for key_type in KEY_TYPES:
        systems[key_type] = System("mta", overrides=merge(extra, sections[key_type]))
    rates: dict[str, list[float]] = {name: [] for name in systems}
    cpu: dict[str, list[float]] = {name: [] for name in systems}  # relay CPU ms per message
    names = list(systems)
    try:
        for system in systems.values():
            system.start()
        for system in systems.values():  # warm-up, not measured
            throughput_run(system, Load(load.size, 10, 0, 300))
        for rep in range(runs):
            for name in names[rep % 3 :] + names[: rep % 3]:  # each goes first once
                run = throughput_run(systems[name], load)
                if "error" in run:
                    system = systems[name]
                    say(f"{name}: {system.queued()} queued; log tail:\n{system.log_tail(40)}")
                    raise RuntimeError(f"{name} run {rep + 1}: {run['error']}")
                rates[name].append(run["e2e_msgs_per_s"])
                cpu[name].append(run["cpu_e2e_s"] / max(run["ok"], 1) * 1000.0)
                say(
                    f"{name} run {rep + 1}: e2e {run['e2e_msgs_per_s']:.0f} msgs/s, "
                    f"{cpu[name][-1]:.3f} CPU ms/msg"
                )
                time.sleep(1.0)
    finally:
        stop_all()
    e2e = {name: round(median(values), 1) for name, values in rates.items()}
    cpu_ms = {name: round(median(values), 3) for name, values in cpu.items()}
    return {
        "load": load.label,
        "messages": load.messages,
        "runs": rates,
        "e2e_msgs_per_s": e2e,
        "cpu_ms_per_msg": cpu_ms,
        "ratio_to_unsigned": {k: round(e2e[k] / e2e["unsigned"], 3) for k in KEY_TYPES},
        "signing_cpu_ms_per_msg": {k: round(cpu_ms[k] - cpu_ms["unsigned"], 3) for k in KEY_TYPES},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.dkim", description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3, help="repetitions per configuration")
    p.add_argument("--messages", type=int, default=3000, help="messages per run")
    p.add_argument("--sessions", type=int, default=50)
    p.add_argument("--size", type=int, default=1024, help="octets per message")
    p.add_argument("--burst", type=int, default=200, help="jobs signed at once (signature)")
    p.add_argument("--only", choices=("signature", "e2e"), help="run one part")
    p.add_argument("--mta-config", type=Path, help="TOML merged into every configuration")
    args = p.parse_args(argv)
    extra = tomllib.loads(args.mta_config.read_text()) if args.mta_config else {}
    sections = write_keys(Path(tempfile.mkdtemp(prefix="mta-dkim-keys-")))
    result: dict[str, Any] = {}
    if args.only != "e2e":
        result["signature"] = signature_costs(sections, args.size, args.burst)
    if args.only != "signature":
        load = Load(args.size, args.sessions, 0, args.messages)
        result["e2e"] = compare(load, args.runs, sections, extra)
    print(json.dumps(result, indent=2))
    if "e2e" in result:
        e2e = result["e2e"]
        rates, cpu = e2e["e2e_msgs_per_s"], e2e["cpu_ms_per_msg"]
        print(
            f"{e2e['load']}: "
            + ", ".join(f"{k} {rates[k]:.0f} msgs/s ({cpu[k]:.3f} CPU ms/msg)" for k in rates)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
