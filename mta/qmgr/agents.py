"""The channel to the delivery agents: a Unix stream socket the queue manager listens on.

Each connected agent is an :class:`Agent` with the jobs it holds.  Jobs go out from the
scheduler's pending queue to the least busy agents, at most :data:`AGENT_WINDOW` in flight
per agent, with one write per agent per round (``dispatch``); results come back in bulk
(``FrameReader``) and are applied in order, one at a time per agent.  A result for a job
the agent does not hold is ignored.

When an agent goes away, every job it held is given back to the scheduler, first in line:
a message is never lost with its agent, at worst delivered twice.  Framing is ipc.py's.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from mta.qmgr.schedule import Scheduler
from mta.queue.ipc import FrameReader, Job, Result, agent_address, encode_frame

__all__ = ["AGENT_WINDOW", "Agent", "AgentChannel"]

log = logging.getLogger("mta.qmgr")

AGENT_WINDOW = 500  # jobs in flight per delivery agent

ApplyResult = Callable[[Result, Job], Awaitable[None]]


@dataclass(eq=False)
class Agent:
    writer: asyncio.StreamWriter
    jobs: dict[str, Job] = field(default_factory=dict)


class AgentChannel:
    def __init__(
        self, spool_path: str, scheduler: Scheduler, apply: ApplyResult, wake: Callable[[], None]
    ) -> None:
        self.spool_path = spool_path
        self.scheduler = scheduler
        self.apply = apply  # awaited for each result, in order
        self.wake = wake  # start a scheduling round soon
        self.agents: list[Agent] = []
        self._server: asyncio.AbstractServer | None = None

    async def listen(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(agent_address(self.spool_path))
        sock.listen(64)
        sock.setblocking(False)
        self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=16 << 20)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()

    def busy(self) -> bool:
        """Some agent holds a job."""
        return any(agent.jobs for agent in self.agents)

    def dispatch(self) -> None:
        """Hand pending jobs to the least busy agents: one write per agent per round."""
        if self.scheduler.stopping or not self.agents:
            return
        pending = self.scheduler.pending
        frames: dict[Agent, list[bytes]] = {}
        while pending:
            agent = min(self.agents, key=lambda a: len(a.jobs))
            if len(agent.jobs) >= AGENT_WINDOW:
                break
            job = pending.popleft()
            agent.jobs[job.queue_id] = job
            frames.setdefault(agent, []).append(encode_frame(job))
        for agent, batch in frames.items():
            agent.writer.write(b"".join(batch))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        agent = Agent(writer)
        self.agents.append(agent)
        self.wake()
        frames = FrameReader()
        try:
            while data := await reader.read(1 << 16):
                for frame in frames.feed(data):
                    if isinstance(frame, Result):
                        job = agent.jobs.pop(frame.queue_id, None)
                        if job is not None:
                            await self.apply(frame, job)
        except (OSError, ValueError) as exc:
            log.warning("delivery agent connection failed: %s", exc)
        finally:
            self.agents.remove(agent)
            writer.close()
            self.scheduler.give_back(list(agent.jobs.values()))  # the agent died
            agent.jobs.clear()
            self.wake()
