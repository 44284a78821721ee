"""Helpers for the integrity fault tests (damaged spool files, failing and slow flushes).

* :func:`fill_spool` queues messages the way smtpd does (MessageWriter and the group
  committer) in a short-lived process, so that the spool holds acknowledged messages of a
  writer that is gone, as after a restart; the test then damages the files at rest and
  starts a real relay on that spool.
* :class:`TracedMta` is ``mta serve`` under ``strace -f``, which delays or fails
  ``fdatasync(2)`` (the segment flush) in every process of the tree.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import smtplib
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.helpers import REPO, MtaProcess, child_pids, wait_for_port, wait_until

STRACE = shutil.which("strace")
SENDER = "sender@client.test"
RECIPIENT = "rcpt@remote.test"


def body(marker: str, size: int = 0) -> bytes:
    """A message whose body names it (``marker``), padded to about ``size`` octets."""
    head = f"Subject: {marker}\r\n\r\n{marker}\r\n".encode()
    padding = b"".join(b"%s %07d\r\n" % (marker.encode(), i) for i in range(size // 20))
    return head + padding


_FILL = """
import asyncio, json, sys
import uvloop
from mta.queue.commit import GroupCommitter
from mta.queue.envelope import Envelope, Recipient
from mta.queue.ids import new_queue_id
from mta.queue.spool import Spool

async def main(spool, bodies):
    committer = GroupCommitter(spool, asyncio.get_running_loop())
    ids = []
    for data in bodies:  # one by one: one record per commit, as a quiet smtpd writes them
        writer = spool.new_message(new_queue_id())
        writer.write(data)
        writer.finish(Envelope(queue_id=writer.queue_id, sender=SENDER,
                               recipients=[Recipient(address=RECIPIENT)], size=writer.length))
        done = asyncio.get_running_loop().create_future()
        committer.submit(writer, done.set_result)
        assert await done is None
        ids.append(writer.queue_id)
    committer.stop()
    return ids

spool = Spool(sys.argv[1]); spool.create()
bodies = [bytes.fromhex(h) for h in json.loads(sys.stdin.read())]
with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
    print(json.dumps(runner.run(main(spool, bodies))))
"""


def fill_spool(spool: Path, bodies: list[bytes]) -> list[str]:
    """Queue ``bodies`` into ``spool`` (small ones into a segment, large ones as files) from
    a process that then exits; their queue IDs, in order."""
    script = _FILL.replace("SENDER", repr(SENDER)).replace("RECIPIENT", repr(RECIPIENT))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, "-c", script, str(spool)],
        input=json.dumps([b.hex() for b in bodies]).encode(),
        capture_output=True,
        env=env,
        timeout=60,
        check=True,
    )
    ids: list[str] = json.loads(done.stdout)
    return ids


def segment_files(spool: Path) -> list[Path]:
    return sorted(p for p in (spool / "segments").iterdir() if not p.name.endswith(".done"))


def flip(path: Path, at: int, count: int = 1) -> None:
    """Invert ``count`` octets of ``path`` from offset ``at`` (bit rot, a bad sector)."""
    with open(path, "r+b") as f:
        f.seek(at)
        data = bytearray(f.read(count))
        f.seek(at)
        f.write(bytes(b ^ 0xFF for b in data))


def relay_config(sink_port: int) -> dict[str, Any]:
    return {"delivery": {"relayhost": f"127.0.0.1:{sink_port}", "min_backoff": 1, "max_backoff": 2}}


def send(port: int, data: bytes) -> tuple[int, bytes]:
    """One message over SMTP; the reply code after DATA (250, or 451 ...) and its text."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        try:
            client.sendmail(SENDER, [RECIPIENT], data)
        except smtplib.SMTPDataError as exc:
            text = exc.smtp_error
            return exc.smtp_code, text if isinstance(text, bytes) else text.encode()
    return 250, b""


def qmgr_pid(server: MtaProcess, timeout: float = 15.0) -> int:
    """The pid of the queue manager, from its "ready" log line."""
    pattern = re.compile(r"mta\[(\d+)\] mta\.qmgr: queue manager ready")

    def found() -> int:
        text = server.log_path.read_text(errors="replace") if server.log_path.exists() else ""
        pids = [int(p) for p in pattern.findall(text)]
        return pids[-1] if pids and os.path.exists(f"/proc/{pids[-1]}") else 0

    pid: int = wait_until(found, timeout)
    return pid


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class TracedMta(MtaProcess):
    """``mta serve`` run by ``strace -f`` with a fault injected into ``fdatasync``
    (``inject`` is strace's: ``error=EIO``, ``delay_enter=2500000``, ``...:when=1..3``).
    Only the segment flush calls ``fdatasync`` (durable.py), so that is what it hits."""

    def __init__(self, workdir: Path, overrides: dict[str, Any], inject: str) -> None:
        super().__init__(workdir, overrides)
        self.inject = inject

    def start(self, wait: bool = True) -> TracedMta:
        assert STRACE is not None
        self.write_config()
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        strace = [STRACE, "-f", "-qq", "--seccomp-bpf", "-o", str(self.workdir / "strace.out")]
        strace += ["-e", "trace=fdatasync", "-e", f"inject=fdatasync:{self.inject}"]
        serve = [sys.executable, "-m", "mta", "--config", str(self.config_path), "serve"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                strace + serve, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, env=env
            )
        if wait:
            wait_for_port("127.0.0.1", self.port)
        return self

    @property
    def master_pid(self) -> int:
        assert self.proc is not None
        pid: int = wait_until(lambda: child_pids(self.pid)[:1] or None)[0]
        return pid

    def signal(self, signum: int) -> None:
        os.kill(self.master_pid, signum)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)  # strace ends with the tree it runs
        except subprocess.TimeoutExpired:
            self.kill_tree()
            raise

    def kill_tree(self) -> None:
        if self.proc is None:
            return
        master = child_pids(self.pid)
        for pid in [*(c for m in master for c in child_pids(m)), *master, self.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)
