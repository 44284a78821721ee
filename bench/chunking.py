"""BDAT against DATA: accept msgs/s of one mta tree taking the same load both ways.

``python -m bench.chunking`` starts one mta tree (with its sink) and drives the load
generator at it with DATA and with ``--bdat`` (RFC 3030 ``BDAT n LAST``, the message in
one chunk pipelined with MAIL and RCPT), interleaved (DATA, BDAT, then BDAT, DATA, ...),
``--runs`` times; it prints the median accept msgs/s of each, the ratio BDAT/DATA and the
relay tree's CPU ms per message (steadier than msgs/s on a shared machine).  The yardstick
load is the issue's: 1 KiB, 50 sessions, many messages per connection.  ``--mta-config
FILE`` (TOML) is merged into the configuration.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # ``python bench/chunking.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.scenarios import Load, throughput_run
from bench.stats import median
from bench.systems import System, stop_all

__all__ = ["compare"]

MODES = {"DATA": [], "BDAT": ["--bdat"]}  # the load generator's extra arguments


def say(text: str) -> None:
    print(f"[chunking {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def compare(load: Load, runs: int, extra: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Run ``load`` with DATA and with BDAT against one relay, interleaved; medians."""
    system = System("mta", overrides=extra)
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    cpu: dict[str, list[float]] = {mode: [] for mode in MODES}  # relay CPU ms per message
    try:
        system.start()
        for args in MODES.values():  # warm-up, not measured
            throughput_run(system, Load(load.size, 10, 0, 300), args)
        for rep in range(runs):
            order = list(MODES) if rep % 2 == 0 else list(reversed(MODES))
            for mode in order:
                run = throughput_run(system, load, MODES[mode])
                if "error" in run:
                    say(f"{mode}: {system.queued()} queued; log tail:\n{system.log_tail(40)}")
                    raise RuntimeError(f"{mode} run {rep + 1}: {run['error']}")
                rates[mode].append(run["accept_msgs_per_s"])
                cpu[mode].append(run["cpu_accept_s"] / max(run["ok"], 1) * 1000.0)
                say(
                    f"{mode} run {rep + 1}: accept {run['accept_msgs_per_s']:.0f} msgs/s, "
                    f"{cpu[mode][-1]:.3f} CPU ms/msg"
                )
                time.sleep(1.0)
    finally:
        stop_all()
    data, bdat = median(rates["DATA"]), median(rates["BDAT"])
    return {
        "load": load.label,
        "messages": load.messages,
        "runs": rates,
        "data_msgs_per_s": round(data, 1),
        "bdat_msgs_per_s": round(bdat, 1),
        "ratio": round(bdat / data, 3),
        "cpu_ms_per_msg": {mode: round(median(values), 3) for mode, values in cpu.items()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.chunking", description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3, help="repetitions per mode")
    p.add_argument("--messages", type=int, default=4000, help="messages per run")
    p.add_argument("--sessions", type=int, default=50)
    p.add_argument("--size", type=int, default=1024, help="octets per message")
    p.add_argument("--mta-config", type=Path, help="TOML merged into the configuration")
    args = p.parse_args(argv)
    extra = tomllib.loads(args.mta_config.read_text()) if args.mta_config else {}
    result = compare(Load(args.size, args.sessions, 0, args.messages), args.runs, extra)
    print(json.dumps(result, indent=2))
    print(
        f"{result['load']}: DATA {result['data_msgs_per_s']:.0f} msgs/s, "
        f"BDAT {result['bdat_msgs_per_s']:.0f} msgs/s, BDAT/DATA {result['ratio']:.3f}; "
        f"CPU ms/msg DATA {result['cpu_ms_per_msg']['DATA']:.3f}, "
        f"BDAT {result['cpu_ms_per_msg']['BDAT']:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
