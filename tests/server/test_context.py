"""The worker context: the session limits it builds from the configuration, and the
counters it publishes (its own state, not the module's)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from prometheus_client import REGISTRY

from mta import parser_backend
from mta.config import Config
from mta.protocol.session import SessionLimits
from mta.queue.spool import Spool
from mta.server.context import WorkerContext, session_limits
from tests.server.fake_io import make_context


def test_session_limits_have_no_defaults_of_their_own() -> None:
    """The configuration is the one owner of the defaults."""
    fields = dataclasses.fields(SessionLimits)
    assert all(f.default is dataclasses.MISSING for f in fields)


def test_session_limits_of_the_default_configuration() -> None:
    smtp = Config().smtp
    assert session_limits(Config(hostname="mx.test")) == SessionLimits(
        hostname="mx.test",
        max_message_size=smtp.max_message_size,
        max_recipients=smtp.max_recipients,
        max_line_length=smtp.max_line_length,
        max_errors=smtp.max_errors,
        normalize_bare_line_endings=False,
        starttls=False,
        strip_nul=False,
        require_tls=False,
        auth=False,
        auth_plaintext=False,
        require_auth=False,
        vrfy=True,
    )


def test_session_limits_follow_the_configuration() -> None:
    settings = {
        "hostname": "mx2.test",
        "smtp": {
            "max_message_size": 1000,
            "max_recipients": 2,
            "max_line_length": 600,
            "max_errors": 3,
            "bare_lf": "normalize",
            "nul": "strip",
            "tls_cert": "/etc/cert.pem",
            "tls_key": "/etc/key.pem",
            "vrfy": False,
        },
    }
    limits = session_limits(msgspec.convert(settings, Config))
    assert limits == SessionLimits(
        "mx2.test", 1000, 2, 600, 3, True, True, True, False, False, False, False, False
    )


@pytest.fixture
def contexts(tmp_path: Path) -> Iterator[list[WorkerContext]]:
    loop = asyncio.new_event_loop()
    parser = parser_backend.select()
    made = [make_context(loop, Spool(str(tmp_path / n)), parser) for n in ("a", "b")]
    yield made
    for ctx in made:
        ctx.committer.stop()
    loop.close()


def batches_published() -> float:
    return REGISTRY.get_sample_value("mta_queue_commit_batches_total") or 0.0


def test_each_context_publishes_its_own_commit_count(contexts: list[WorkerContext]) -> None:
    first, second = contexts
    start = batches_published()
    first.committer.batches = 3
    first.publish_stats()
    first.publish_stats()  # only what changed is added
    assert batches_published() == start + 3
    second.committer.batches = 2  # another committer's count starts at its own zero
    second.publish_stats()
    assert batches_published() == start + 5
