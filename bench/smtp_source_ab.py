"""The headline figure, A/B interleaved: ``smtp-source -s 50 -m 5000 -l 1024`` into mta
(group commit on, and off) and into a private Debian Postfix, all relaying to one smtp-sink.

For each system it reports the accept rate (smtp-source start to exit) and the end-to-end
rate (until the system's queue is empty, i.e. the sink has taken every message), medians of
``--runs`` interleaved runs.  ``python -m bench.smtp_source_ab [--runs 3]``; needs root and
Debian's postfix (see bench/postfix.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time

from bench.postfix import PostfixInstance
from bench.procs import free_port, wait_for_greeting

SESSIONS, MESSAGES, SIZE = 50, 5000, 1024


def _source(address: str) -> tuple[float, float]:
    start = time.monotonic()
    subprocess.run(
        ["smtp-source", "-s", str(SESSIONS), "-m", str(MESSAGES), "-l", str(SIZE),
         "-f", "a@bench.test", "-t", "b@bench.test", address],
        check=True, timeout=600,
    )  # fmt: skip
    return time.monotonic() - start, start


def _mta(sink_port: int, group_commit: bool, root: str) -> tuple[float, float]:
    work = tempfile.mkdtemp(dir=root)
    port, metrics = free_port(), free_port()
    config = os.path.join(work, "mta.toml")
    with open(config, "w") as f:
        f.write(
            f'hostname = "mta.bench.test"\n[smtp]\nlisten = ["127.0.0.1:{port}"]\n'
            f'[delivery]\nrelayhost = "127.0.0.1:{sink_port}"\n'
            f'[queue]\npath = "{work}/spool"\ngroup_commit = {str(group_commit).lower()}\n'
            f'[metrics]\nlisten = "127.0.0.1:{metrics}"\n'
        )
    with open(os.path.join(work, "log"), "w") as log:
        proc = subprocess.Popen(["mta", "--config", config, "serve"], stderr=log)
    try:
        wait_for_greeting("127.0.0.1", port, 30)
        accept, start = _source(f"127.0.0.1:{port}")
        spool = os.path.join(work, "spool")
        while any(os.listdir(os.path.join(spool, s)) for s in ("incoming", "active", "deferred")):
            time.sleep(0.02)
        return MESSAGES / accept, MESSAGES / (time.monotonic() - start)
    finally:
        proc.terminate()
        proc.wait(60)


def _postfix(postfix: PostfixInstance) -> tuple[float, float]:
    accept, start = _source(postfix.address)
    postfix.wait_empty(600)
    return MESSAGES / accept, MESSAGES / (time.monotonic() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    sink_port = free_port()
    sink = subprocess.Popen(
        ["smtp-sink", "-u", "nobody", "-c", f"127.0.0.1:{sink_port}", "5000"],
        stdout=subprocess.DEVNULL,
    )
    root = tempfile.mkdtemp(prefix="bench-ab-")
    results: dict[str, list[tuple[float, float]]] = {"mta": [], "mta, no group commit": [],
                                                     "postfix": []}  # fmt: skip
    try:
        with PostfixInstance(sink_port=sink_port) as postfix:
            for _ in range(args.runs):
                results["mta"].append(_mta(sink_port, True, root))
                results["postfix"].append(_postfix(postfix))
                results["mta, no group commit"].append(_mta(sink_port, False, root))
    finally:
        sink.terminate()
        shutil.rmtree(root, ignore_errors=True)
    base = statistics.median(a for a, _ in results["postfix"])
    base_e2e = statistics.median(e for _, e in results["postfix"])
    print("| system | accept msgs/s | end-to-end msgs/s | accept / postfix | e2e / postfix |")
    print("|---|---:|---:|---:|---:|")
    for name, runs in results.items():
        accept = statistics.median(a for a, _ in runs)
        e2e = statistics.median(e for _, e in runs)
        ratios = f"{accept / base:.2f}x | {e2e / base_e2e:.2f}x"
        print(f"| {name} | {accept:.0f} | {e2e:.0f} | {ratios} |")


if __name__ == "__main__":
    main()
