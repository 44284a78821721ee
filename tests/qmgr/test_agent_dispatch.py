"""Handing jobs out to delivery agents (mta/qmgr/agents.py): never to a dying connection.

An agent's connection closes when its process stops (a reload replaces it) while the queue
manager may still be applying one of its results; a round in that window used to write the
next jobs to the closed transport, and the RuntimeError killed the queue manager (seen in
CI with HUPs under load).  Real socket pairs, real stream writers.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from typing import Any, cast

from mta.qmgr.agents import Agent, AgentChannel
from mta.queue.ipc import Job


class _Pending:
    """What dispatch() reads of the scheduler: the jobs waiting, and whether it stops."""

    def __init__(self, jobs: list[Job]) -> None:
        self.pending = deque(jobs)
        self.stopping = False


async def _agent() -> tuple[Agent, socket.socket]:
    ours, theirs = socket.socketpair()
    _, writer = await asyncio.open_unix_connection(sock=ours)
    return Agent(writer), theirs


def test_jobs_go_only_to_agents_whose_connection_is_open() -> None:
    async def scenario() -> None:
        jobs = [Job(queue_id=f"Q{i}") for i in range(4)]
        channel = AgentChannel("/nonexistent", cast(Any, _Pending(jobs)), None, lambda: None, None)  # type: ignore[arg-type]
        dying, dying_peer = await _agent()
        alive, alive_peer = await _agent()
        dying.writer.close()  # its process went away; _serve has not noticed yet
        channel.agents = [dying, alive]
        channel.dispatch()  # raised RuntimeError on the closed transport before
        assert dying.jobs == {}
        assert sorted(alive.jobs) == ["Q0", "Q1", "Q2", "Q3"]
        alive.writer.close()
        dying_peer.close()
        alive_peer.close()

    asyncio.run(scenario())
