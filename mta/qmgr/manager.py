"""The queue manager: the one process that decides what is delivered when.

It takes new messages from the segments smtpd appends to (segment.py) and from
``incoming/`` (large and locally generated messages, claimed by renaming them into
``active/``), woken at once by a datagram from smtpd after each commit and polling once a
second as a fallback.  It brings due messages back from ``deferred/``, hands jobs to the
connected delivery agents (least busy first) and applies their results (outcome.py).  At
most :data:`ACTIVE_WINDOW` messages are active, so a huge backlog waits on disk, not in
memory.

A message delivered from a segment at its first attempt is only marked done there (the
cheap, common case).  One that must stay is first copied into ``active/<queue_id>`` and
marked done in its segment, then handled like any other message file.

On start it recovers from the directories alone: everything in ``active/`` and every
message in a segment not marked done is scheduled again, ``tmp/`` files whose writer
process is gone are removed, names that are not queue IDs go to ``corrupt/``; unreadable
messages are moved to ``corrupt/`` when an agent reports them.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import uvloop

from mta import metrics
from mta.config import Config
from mta.qmgr.outcome import Outcome, apply_results
from mta.qmgr.remover import Remover
from mta.queue.ids import is_queue_id, pid_alive, queue_id_time, writer_alive
from mta.queue.ipc import (
    FlushDeferred,
    FrameReader,
    Job,
    Queued,
    Rescan,
    Result,
    SegmentAppended,
    agent_address,
    decode_wakeup,
    encode_frame,
    wake_address,
)
from mta.queue.msgfile import CorruptMessageFile, parse_message_bytes
from mta.queue.segment import DONE_SUFFIX, RecordRef, SegmentTail, read_payload
from mta.queue.spool import COPY_PREFIX, SEGMENTS, STATES, Spool
from mta.queue.state import StateStore

__all__ = ["QueueManager", "run_qmgr"]

log = logging.getLogger("mta.qmgr")

ACTIVE_WINDOW = 5000
AGENT_WINDOW = 500  # jobs in flight per delivery agent
POLL_SECONDS = 1.0
FULL_SCAN_SECONDS = 60.0
COUNT_SECONDS = 2.0  # how often queue depth metrics are refreshed
TMP_MAX_AGE = 86400.0

Heartbeat = Callable[[], None]


def run_qmgr(config: Config, heartbeat: Heartbeat | None = None) -> None:
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(QueueManager(config).run(heartbeat))
    finally:
        loop.close()


@dataclass(eq=False)
class Agent:
    writer: asyncio.StreamWriter
    jobs: dict[str, Job] = field(default_factory=dict)


class QueueManager:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.spool = Spool(config.queue.path)
        self.spool.create()
        self.states = StateStore(self.spool.path)
        self.active: set[str] = set()  # queue IDs in active/ or a segment that we own
        self.segments: dict[str, SegmentTail] = {}  # by name, oldest first
        self.located: dict[str, RecordRef] = {}  # active messages that live in a segment
        self._extracted: set[str] = set()  # message files at start (see recover)
        self._scan_segments = True  # look for new segment files in the next round
        self._scan_incoming = True  # look for new files in incoming/ in the next round
        self._last_segment_scan = 0.0
        self.pending: deque[Job] = deque()
        self.agents: list[Agent] = []
        self.deferred: list[tuple[float, str]] = []  # heap of (next try, queue id)
        self.wake = asyncio.Event()
        self.stopping = False
        self._scheduling = True
        self._rescan_deferred = True
        self._last_full_scan = 0.0
        self._last_count = 0.0
        self._io = ThreadPoolExecutor(1, thread_name_prefix="qmgr-io")
        self.remover = Remover(self.spool)

    # ----- lifecycle ------------------------------------------------------------------

    async def run(self, heartbeat: Heartbeat | None) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        self.recover()
        server = await self._listen_agents()
        wake_sock = self._listen_wakeups(loop)
        scheduler = loop.create_task(self._schedule_forever(heartbeat))
        log.info(
            "queue manager ready: %d active, %d deferred", len(self.active), len(self.deferred)
        )
        await stop.wait()
        self.stopping = True
        await self._drain()
        self._scheduling = False  # the scheduler ends after the round it may be in
        self.wake.set()
        await scheduler
        server.close()
        loop.remove_reader(wake_sock.fileno())
        wake_sock.close()
        self._io.shutdown(wait=True)
        self.remover.stop()
        for tail in self.segments.values():
            tail.close()

    async def _drain(self) -> None:
        """Wait for results of jobs in flight (agents are draining too), then stop."""
        deadline = time.monotonic() + self.config.master.graceful_timeout
        while any(a.jobs for a in self.agents) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    def recover(self) -> None:
        self._clean_tmp()
        for name in self.spool.list("tmp"):
            if name.startswith(COPY_PREFIX):  # a copy out of a segment we were making
                os.unlink(self.spool.file("tmp", name))
        for state in ("incoming", "active", "deferred", "hold"):
            for name in self.spool.list(state):
                if not is_queue_id(name):
                    self._to_corrupt(state, name, "not a queue file name")
        for queue_id in self.spool.list("active"):
            self._schedule(queue_id)
        self._load_deferred()
        # A segment message copied into a file of its own whose done mark was lost in a
        # crash must not be delivered twice: the file is the one that counts.
        for state in ("incoming", "active", "deferred", "hold", "corrupt"):
            self._extracted.update(self.spool.list(state))

    # ----- scheduling -------------------------------------------------------------------

    async def _schedule_forever(self, heartbeat: Heartbeat | None) -> None:
        while self._scheduling:
            try:
                await asyncio.wait_for(self.wake.wait(), POLL_SECONDS)
            except TimeoutError:
                pass
            self.wake.clear()
            if heartbeat is not None:
                heartbeat()
            if self._scheduling:
                self._round()

    def _round(self) -> None:
        now = time.time()
        if now - self._last_full_scan >= FULL_SCAN_SECONDS:
            self._last_full_scan = now
            self._rescan_deferred = True
            self._clean_tmp()
        if now - self._last_count >= COUNT_SECONDS:
            self._last_count = now
            self._count_queue()
        if self._rescan_deferred:
            self._load_deferred()
        polled = now - self._last_segment_scan >= POLL_SECONDS
        if self._scan_segments or polled:
            self._last_segment_scan = now
            self._scan_segments = False
            self._open_segments()
        self._claim_segments()
        self._retire_segments(check_writers=polled)
        if self._scan_incoming or polled:
            self._scan_incoming = False
            self._claim_incoming()
        self._claim_due(now)
        self._dispatch()

    def _claim_incoming(self) -> None:
        room = ACTIVE_WINDOW - len(self.active)
        if room <= 0:
            return
        try:
            names = os.listdir(self.spool.dir("incoming"))
        except FileNotFoundError:
            return
        if len(names) > room:
            self._scan_incoming = True  # the rest when there is room
        for name in sorted(names)[:room]:
            if not is_queue_id(name):
                self._to_corrupt("incoming", name, "not a queue file name")
                continue
            try:
                self.spool.move(name, "incoming", "active")
            except FileNotFoundError:
                continue  # an operator (queue hold/delete) was faster
            self._schedule(name)

    def _open_segments(self) -> None:
        """Start following segment files we do not know yet (oldest first)."""
        directory = os.path.join(self.spool.path, SEGMENTS)
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            return
        for name in names:
            if name in self.segments or name.endswith(DONE_SUFFIX):
                continue
            if not is_queue_id(name):
                self._to_corrupt(SEGMENTS, name, "not a segment file name")
                continue
            try:
                tail = SegmentTail.open(directory, name)
            except FileNotFoundError:
                continue
            self.segments[name] = tail

    def _claim_segments(self) -> None:
        room = ACTIVE_WINDOW - len(self.active)
        for tail in self.segments.values():
            if room <= 0:
                return
            try:
                refs = tail.read_new(room)
            except OSError as exc:  # not damage in the segment: try again next round
                log.error("segment %s: cannot read: %s", tail.name, exc)
                continue
            for ref in refs:
                if ref.offset in tail.done:
                    continue
                if ref.queue_id in self._extracted:
                    self.remover.segment_done(ref, delivered=False)
                    continue
                tail.live.add(ref.offset)
                self.located[ref.queue_id] = ref
                self.active.add(ref.queue_id)
                self.pending.append(
                    Job(
                        queue_id=ref.queue_id,
                        segment=ref.segment,
                        offset=ref.offset,
                        length=ref.length,
                    )
                )
                room -= 1
            if tail.broken and not tail.live:
                log.error("segment %s: %s; reading stopped there", tail.name, tail.broken)

    def _retire_segments(self, check_writers: bool) -> None:
        """Delete segments that are closed (or whose writer died) and hold nothing live."""
        for name, tail in list(self.segments.items()):
            if tail.live:
                continue
            finished = tail.closed or tail.broken or (tail.writer_gone and tail.caught_up)
            if not finished:
                if check_writers and not tail.writer_gone:
                    # the next round reads it once more: it may have written before dying
                    tail.writer_gone = not pid_alive(tail.writer_pid)
                continue
            tail.close()
            del self.segments[name]
            if tail.broken:
                self._to_corrupt(SEGMENTS, name, tail.broken)
                self.remover.drop_segment(name, keep=True)
            else:
                self.remover.drop_segment(name)

    def _claim_due(self, now: float) -> None:
        heap = self.deferred
        while heap and heap[0][0] <= now and len(self.active) < ACTIVE_WINDOW:
            _, queue_id = heapq.heappop(heap)
            try:
                mtime = os.stat(self.spool.file("deferred", queue_id)).st_mtime
            except FileNotFoundError:
                continue  # released, held or deleted by an operator
            if mtime > now:
                heapq.heappush(heap, (mtime, queue_id))  # rescheduled meanwhile
                continue
            try:
                self.spool.move(queue_id, "deferred", "active")
            except FileNotFoundError:
                continue
            self._schedule(queue_id)

    def _schedule(self, queue_id: str) -> None:
        state = self.states.load(queue_id)
        self.active.add(queue_id)
        self.pending.append(Job(queue_id=queue_id, recipients=state.pending() if state else None))

    def _load_deferred(self) -> None:
        self._rescan_deferred = False
        heap: list[tuple[float, str]] = []
        try:
            entries = list(self.spool.scan("deferred"))
        except FileNotFoundError:
            entries = []
        for entry in entries:
            if is_queue_id(entry.name):
                try:
                    heap.append((entry.stat().st_mtime, entry.name))
                except FileNotFoundError:
                    continue
        heapq.heapify(heap)
        self.deferred = heap

    def _dispatch(self) -> None:
        """Hand pending jobs to the least busy agents: one write per agent per round."""
        if self.stopping or not self.agents:
            return
        frames: dict[Agent, list[bytes]] = {}
        while self.pending:
            agent = min(self.agents, key=lambda a: len(a.jobs))
            if len(agent.jobs) >= AGENT_WINDOW:
                break
            job = self.pending.popleft()
            agent.jobs[job.queue_id] = job
            frames.setdefault(agent, []).append(encode_frame(job))
        for agent, batch in frames.items():
            agent.writer.write(b"".join(batch))

    # ----- agents and results ---------------------------------------------------------

    async def _listen_agents(self) -> asyncio.AbstractServer:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(agent_address(self.spool.path))
        sock.listen(64)
        sock.setblocking(False)
        return await asyncio.start_unix_server(self._serve_agent, sock=sock, limit=16 << 20)

    async def _serve_agent(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        agent = Agent(writer)
        self.agents.append(agent)
        self.wake.set()
        frames = FrameReader()
        try:
            while data := await reader.read(1 << 16):
                for frame in frames.feed(data):
                    if isinstance(frame, Result):
                        job = agent.jobs.pop(frame.queue_id, None)
                        if job is not None:
                            await self._apply(frame, job)
        except (OSError, ValueError) as exc:
            log.warning("delivery agent connection failed: %s", exc)
        finally:
            self.agents.remove(agent)
            writer.close()
            for job in agent.jobs.values():  # the agent died: its jobs go round again
                self.pending.appendleft(job)
            agent.jobs.clear()
            self.wake.set()

    async def _apply(self, result: Result, job: Job) -> None:
        loop = asyncio.get_running_loop()
        queue_id = result.queue_id
        ref = self.located.get(queue_id) if job.segment else None
        if self._all_done_at_first_try(result, job):
            # the common case: nothing to read, nothing to save
            if ref is not None:
                self._segment_done(ref, delivered=True)
            else:
                self.remover.remove(queue_id)
            self.active.discard(queue_id)
            self.wake.set()
            return
        if ref is not None:  # it must outlive this attempt: give it a file of its own
            try:
                kept = await loop.run_in_executor(self._io, self._extract, ref)
            except OSError as exc:
                log.error("%s: cannot copy the message out of its segment: %s", queue_id, exc)
                loop.call_later(self.config.delivery.min_backoff, self._retry, job)
                return
            self._segment_done(ref, delivered=False)
            if not kept:
                self.active.discard(queue_id)
                return
        try:
            outcome = await loop.run_in_executor(self._io, self._apply_sync, result)
        except OSError as exc:
            log.error("%s: cannot record the delivery result: %s; will retry", queue_id, exc)
            outcome = None
        self.active.discard(queue_id)
        if outcome is not None and not outcome.removed:
            heapq.heappush(self.deferred, (outcome.next_try, queue_id))
        if outcome is not None and outcome.bounce_id:
            self._scan_incoming = True  # the bounce waits in incoming/
        elif outcome is None:
            self._schedule_later(queue_id)
        self.wake.set()

    @staticmethod
    def _all_done_at_first_try(result: Result, job: Job) -> bool:
        """First attempt (so no state file exists) and every recipient was sent."""
        return (
            job.recipients is None
            and not result.problem
            and bool(result.results)
            and all(r.status == "sent" for r in result.results)
        )

    def _segment_done(self, ref: RecordRef, delivered: bool) -> None:
        self.located.pop(ref.queue_id, None)
        tail = self.segments.get(ref.segment)
        if tail is not None:
            tail.live.discard(ref.offset)
        self.remover.segment_done(ref, delivered)

    def _retry(self, job: Job) -> None:
        if job.queue_id in self.active and not self.stopping:
            self.pending.append(job)
            self.wake.set()

    def _extract(self, ref: RecordRef) -> bool:
        """Copy a segment message into ``active/`` (durably); False if it was unreadable
        and went to ``corrupt/`` instead.  Runs in the I/O thread."""
        path = self.spool.segment(ref.segment)
        raw = read_payload(path, ref.offset, ref.length)
        try:
            parse_message_bytes(f"{path}@{ref.offset}", raw)
        except CorruptMessageFile as exc:
            self.spool.store(ref.queue_id, "corrupt", raw)
            log.error("%s: moved to corrupt/: %s", ref.queue_id, exc)
            return False
        self.spool.store(ref.queue_id, "active", raw)
        return True

    def _apply_sync(self, result: Result) -> Outcome | None:
        queue_id = result.queue_id
        if result.problem in ("missing", "internal"):  # internal: retried after min_backoff
            return None
        try:
            message = self.spool.read("active", queue_id)
        except (CorruptMessageFile, FileNotFoundError) as exc:
            self._to_corrupt("active", queue_id, str(exc))
            return Outcome(queue_id, removed=True)
        if result.problem == "corrupt":
            self._to_corrupt("active", queue_id, "reported corrupt by a delivery agent")
            return Outcome(queue_id, removed=True)
        return apply_results(self.config, self.spool, self.states, message, result.results)

    def _schedule_later(self, queue_id: str) -> None:
        """Leave a message we could not record in active/ for the next start or full scan."""
        try:
            self.spool.move(queue_id, "active", "deferred")
            retry = time.time() + self.config.delivery.min_backoff
            os.utime(self.spool.file("deferred", queue_id), (retry, retry))
            heapq.heappush(self.deferred, (retry, queue_id))
        except OSError:
            pass

    # ----- wake-ups, housekeeping -----------------------------------------------------

    def _listen_wakeups(self, loop: asyncio.AbstractEventLoop) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        sock.bind(wake_address(self.spool.path))

        def readable() -> None:
            while True:
                try:
                    datagram = sock.recv(256)
                except BlockingIOError:
                    break
                message = decode_wakeup(datagram)
                if message is None:
                    log.debug("ignored a datagram that is no wake-up: %r", datagram[:64])
                elif isinstance(message, SegmentAppended):
                    if message.name not in self.segments:
                        self._scan_segments = True
                elif isinstance(message, Queued):
                    self._scan_incoming = True
                elif isinstance(message, FlushDeferred):
                    self._scan_incoming = True
                    self._flush_deferred()
                    self._rescan_deferred = True
                elif isinstance(message, Rescan):
                    self._scan_incoming = True
                    self._rescan_deferred = True
            self.wake.set()

        loop.add_reader(sock.fileno(), readable)
        return sock

    def _flush_deferred(self) -> None:
        """``mta queue flush``: every deferred message is due now."""
        now = time.time()
        for queue_id in self.spool.list("deferred"):
            try:
                os.utime(self.spool.file("deferred", queue_id), (now, now))
            except FileNotFoundError:
                continue

    def _clean_tmp(self) -> None:
        now = time.time()
        for entry in self.spool.scan("tmp"):
            name = entry.name
            if name.startswith("."):
                continue
            try:
                age = now - entry.stat().st_mtime
            except FileNotFoundError:
                continue
            if age > TMP_MAX_AGE or (is_queue_id(name) and not writer_alive(name)):
                try:
                    os.unlink(entry.path)
                    log.info("removed leftover %s from tmp/", name)
                except FileNotFoundError:
                    pass

    def _to_corrupt(self, state: str, name: str, why: str) -> None:
        try:
            os.rename(self.spool.file(state, name), self.spool.file("corrupt", name))
            log.error("%s: moved to corrupt/: %s", name, why)
        except FileNotFoundError:
            pass

    def _count_queue(self) -> None:
        oldest = 0.0
        now = time.time()
        for state in STATES[1:]:
            names = self.spool.list(state)
            in_segments = len(self.located) if state == "active" else 0
            metrics.QUEUE_DEPTH.labels(state).set(len(names) + in_segments)
            ids = [n for n in names if is_queue_id(n)]
            if ids and state != "corrupt":
                oldest = max(oldest, now - queue_id_time(ids[0]))
        metrics.QUEUE_OLDEST_AGE.set(oldest)
