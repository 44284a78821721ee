"""The cost of the edge checks: accept msgs/s with per-client limits, access tables and
recipient validation on, against all of them off, in the same run.

``python -m bench.edge`` starts two mta trees (each with its own sink), "off" and "on",
and drives the same load (1 KiB, 50 sessions, many messages per connection: the issue's
yardstick) against them A/B interleaved, ``--runs`` times; it prints the medians and the
ratio on/off, which must stay above 0.90.  ``--mta-config FILE`` (TOML) is merged into both
configurations, e.g. to pin ``smtp.workers``.

"On" is :data:`CHECKS_ON` plus the tables :func:`write_tables` makes: every check the edge
has, set so that the bench's client (on 127.0.0.1) is checked but never refused; the tables
are of a realistic size and none of their entries matches, so every lookup runs to its end.
A new check adds its section there.  (DNSBL lookups and the greeting pause are left out: the
one needs a DNS server and answers from its cache, the other is a deliberate wait.)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # ``python bench/edge.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.scenarios import Load, throughput_run
from bench.stats import median
from bench.systems import System, stop_all

__all__ = ["CHECKS_OFF", "CHECKS_ON", "compare", "merge", "write_tables"]

_HIGH = 1_000_000_000  # a limit the bench never reaches
# every edge check on, for the bench's own client; one place to add a check
CHECKS_ON: dict[str, dict[str, Any]] = {
    "limits": {
        "exempt_networks": [],  # the bench's client is on loopback, in relay.networks
        "connections": 10_000,
        "connection_rate": _HIGH,
        "message_rate": _HIGH,
        "recipient_rate": _HIGH,
        "auth_failures": _HIGH,
    },
}
# every edge check off (no anvil either)
CHECKS_OFF: dict[str, dict[str, Any]] = {
    "limits": {"connections": 0, "auth_failures": 0},
}


def write_tables(directory: Path) -> dict[str, dict[str, Any]]:
    """Access tables (100 networks, 1,000 HELO names, senders and recipients) and a table of
    10,000 valid recipients with the bench's one among them; the config sections naming them."""
    tables = {
        "client": [f"10.{i // 256}.{i % 256}.0/24 REJECT" for i in range(100)],
        "helo": [f"host{i}.example.net REJECT" for i in range(1000)],
        "sender": [f"user{i}@senders.example REJECT" for i in range(1000)],
        "recipient": [f"user{i}@recipients.example REJECT" for i in range(1000)],
        "recipients": ["b@bench.test", *(f"user{i}@bench.test" for i in range(9999))],
    }
    paths = {}
    for name, lines in tables.items():
        path = directory / name
        path.write_text("\n".join(lines) + "\n")
        paths[name] = str(path)
    recipients = paths.pop("recipients")
    return {"access": paths, "relay": {"domains": ["bench.test"], "recipients": recipients}}


def merge(*configs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Section by section, later keys win."""
    merged: dict[str, dict[str, Any]] = {}
    for config in configs:
        for section, values in config.items():
            merged.setdefault(section, {}).update(values)
    return merged


def say(text: str) -> None:
    print(f"[edge {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def compare(load: Load, runs: int, extra: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Run ``load`` against checks off and on, interleaved; medians and the ratio."""
    tables = write_tables(Path(tempfile.mkdtemp(prefix="mta-edge-tables-")))
    systems = {
        "off": System("mta", overrides=merge(extra, CHECKS_OFF)),
        "on": System("mta", overrides=merge(extra, CHECKS_ON, tables)),
    }
    rates: dict[str, list[float]] = {name: [] for name in systems}
    cpu: dict[str, list[float]] = {name: [] for name in systems}  # relay CPU ms per message
    try:
        for system in systems.values():
            system.start()
        for system in systems.values():  # warm-up, not measured
            throughput_run(system, Load(load.size, 10, 0, 300))
        for rep in range(runs):
            order = list(systems) if rep % 2 == 0 else list(reversed(systems))
            for name in order:
                run = throughput_run(systems[name], load)
                if "error" in run:  # what the queue holds and the log says, before teardown
                    system = systems[name]
                    say(f"{name}: {system.queued()} queued; log tail:\n{system.log_tail(40)}")
                    raise RuntimeError(f"{name} run {rep + 1}: {run['error']}")
                rates[name].append(run["accept_msgs_per_s"])
                cpu[name].append(run["cpu_accept_s"] / max(run["ok"], 1) * 1000.0)
                say(
                    f"{name} run {rep + 1}: accept {run['accept_msgs_per_s']:.0f} msgs/s, "
                    f"{cpu[name][-1]:.3f} CPU ms/msg"
                )
                time.sleep(1.0)
    finally:
        stop_all()
    off, on = median(rates["off"]), median(rates["on"])
    return {
        "load": load.label,
        "messages": load.messages,
        "runs": rates,
        "off_msgs_per_s": round(off, 1),
        "on_msgs_per_s": round(on, 1),
        "ratio": round(on / off, 3),
        # the relay tree's CPU per message: steadier than msgs/s on a shared machine
        "cpu_ms_per_msg": {name: round(median(values), 3) for name, values in cpu.items()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.edge", description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3, help="repetitions per configuration")
    p.add_argument("--messages", type=int, default=4000, help="messages per run")
    p.add_argument("--sessions", type=int, default=50)
    p.add_argument("--size", type=int, default=1024, help="octets per message")
    p.add_argument("--mta-config", type=Path, help="TOML merged into both configurations")
    args = p.parse_args(argv)
    extra = tomllib.loads(args.mta_config.read_text()) if args.mta_config else {}
    result = compare(Load(args.size, args.sessions, 0, args.messages), args.runs, extra)
    print(json.dumps(result, indent=2))
    print(
        f"{result['load']}: off {result['off_msgs_per_s']:.0f} msgs/s, "
        f"on {result['on_msgs_per_s']:.0f} msgs/s, on/off {result['ratio']:.3f}; CPU ms/msg "
        f"off {result['cpu_ms_per_msg']['off']:.3f}, on {result['cpu_ms_per_msg']['on']:.3f}"
    )
    return 0 if result["ratio"] >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
