"""Applying delivery results to the queue (mta/qmgr/outcome.py), on a real spool directory.

The queue manager's decisions, without the processes around them: a message in ``active/``
gets one attempt's results and must end up removed, in ``deferred/`` with its next try as
mtime, or with a bounce queued in ``incoming/``.
"""

from __future__ import annotations

import email
import email.policy
import logging
import os

import pytest

from mta.config import Config, DeliveryConfig
from mta.qmgr.outcome import apply_results, backoff
from mta.queue.envelope import Envelope, Recipient
from mta.queue.ids import new_queue_id, queue_id_time
from mta.queue.msgfile import MessageFile
from mta.queue.results import RecipientResult
from mta.queue.spool import Spool
from mta.queue.state import StateStore
from tests.qmgr.mime import decoded, subparts

MIN_BACKOFF, MAX_BACKOFF, LIFETIME = 10.0, 35.0, 1000.0
MESSAGE = (
    b"Received: from client.test ([127.0.0.1])\r\n\tby mx.test (mta) with ESMTP id X\r\n"
    b"Subject: outcome test\r\nMessage-ID: <outcome@sender.test>\r\n\r\nbody\r\n"
)


@pytest.fixture
def config() -> Config:
    return Config(
        hostname="mx.test",
        delivery=DeliveryConfig(
            min_backoff=MIN_BACKOFF, max_backoff=MAX_BACKOFF, max_lifetime=LIFETIME
        ),
    )


@pytest.fixture
def spool(tmp_path: os.PathLike[str]) -> Spool:
    spool = Spool(os.path.join(tmp_path, "spool"))
    spool.create()
    return spool


@pytest.fixture
def states(spool: Spool) -> StateStore:
    return StateStore(spool.path)


def active_message(
    spool: Spool,
    recipients: list[str],
    sender: str = "alice@sender.test",
    is_bounce: bool = False,
    smtputf8: bool = False,
) -> MessageFile:
    """A complete message file in ``active/``, as the queue manager has claimed it."""
    queue_id = new_queue_id()
    writer = spool.new_message(queue_id)
    writer.write(MESSAGE)
    writer.finish(
        Envelope(
            queue_id=queue_id,
            sender=sender,
            recipients=[Recipient(address=r) for r in recipients],
            received_at=queue_id_time(queue_id),
            size=len(MESSAGE),
            smtputf8=smtputf8,
            is_bounce=is_bounce,
        )
    )
    writer.persist()
    spool.move(queue_id, "tmp", "active")
    return spool.read("active", queue_id)


def result(address: str, status: str, reply: str = "") -> RecipientResult:
    code = {"sent": "250 2.0.0 Ok", "deferred": "451 4.3.0 Try later", "failed": "550 5.1.1 No"}
    text = reply or code[status]
    return RecipientResult(
        address=address,
        status=status,  # type: ignore[arg-type]
        dsn=text[4:9],
        reply=text,
        relay="sink.test[127.0.0.1]:25",
        remote_mta="sink.test",
    )


def names(spool: Spool, state: str) -> list[str]:
    return [n for n in spool.list(state) if not n.startswith(".")]


def back_to_active(spool: Spool, queue_id: str) -> MessageFile:
    """What the scheduler does when the next try is due."""
    spool.move(queue_id, "deferred", "active")
    return spool.read("active", queue_id)


def test_all_sent_removes_message_and_state(
    config: Config, spool: Spool, states: StateStore
) -> None:
    message = active_message(spool, ["bob@dest.test", "carol@dest.test"])
    queue_id = message.envelope.queue_id
    outcome = apply_results(
        config,
        spool,
        states,
        message,
        [result("bob@dest.test", "sent"), result("carol@dest.test", "sent")],
    )
    assert outcome.removed and not outcome.bounce_id
    for state in ("incoming", "active", "deferred"):
        assert names(spool, state) == []
    assert states.load(queue_id) is None
    assert os.listdir(states.dir) == []


def test_deferred_moves_to_deferred_with_next_try_as_mtime(
    config: Config, spool: Spool, states: StateStore
) -> None:
    message = active_message(spool, ["bob@dest.test"])
    queue_id = message.envelope.queue_id
    now = queue_id_time(queue_id) + 5
    outcome = apply_results(
        config, spool, states, message, [result("bob@dest.test", "deferred")], now=now
    )
    assert not outcome.removed and not outcome.bounce_id
    assert names(spool, "active") == [] and names(spool, "deferred") == [queue_id]
    assert names(spool, "incoming") == []
    mtime = os.stat(spool.file("deferred", queue_id)).st_mtime
    assert now + 0.8 * MIN_BACKOFF <= mtime <= now + 1.2 * MIN_BACKOFF
    assert mtime == pytest.approx(outcome.next_try, abs=0.01)
    saved = states.load(queue_id)
    assert saved is not None
    assert saved.attempts == 1 and saved.pending() == ["bob@dest.test"]
    assert saved.last_error == "451 4.3.0 Try later"
    assert saved.next_try == outcome.next_try
    assert saved.first_attempt == saved.last_attempt == now


def test_backoff_doubles_up_to_the_cap(config: Config, spool: Spool, states: StateStore) -> None:
    message = active_message(spool, ["bob@dest.test"])
    queue_id = message.envelope.queue_id
    now = queue_id_time(queue_id)
    for attempt in range(1, 6):
        now += 1
        outcome = apply_results(
            config, spool, states, message, [result("bob@dest.test", "deferred")], now=now
        )
        base = min(MAX_BACKOFF, MIN_BACKOFF * 2 ** (attempt - 1))
        delay = os.stat(spool.file("deferred", queue_id)).st_mtime - now
        assert 0.8 * base - 0.01 <= delay <= 1.2 * base + 0.01, (attempt, delay)
        assert outcome.next_try == pytest.approx(now + delay, abs=0.01)
        message = back_to_active(spool, queue_id)
    saved = states.load(queue_id)
    assert saved is not None and saved.attempts == 5


def test_backoff_function_bounds(config: Config) -> None:
    for attempts, base in [(0, 10), (1, 10), (2, 20), (3, 35), (30, 35)]:
        for _ in range(50):
            assert 0.8 * base <= backoff(attempts, config) <= 1.2 * base


def test_failed_recipient_is_bounced_to_the_sender_with_null_sender(
    config: Config, spool: Spool, states: StateStore
) -> None:
    message = active_message(spool, ["bob@dest.test", "carol@dest.test"])
    outcome = apply_results(
        config,
        spool,
        states,
        message,
        [result("bob@dest.test", "sent"), result("carol@dest.test", "failed")],
    )
    assert outcome.removed and outcome.bounce_id
    assert names(spool, "incoming") == [outcome.bounce_id]
    assert names(spool, "active") == [] and names(spool, "deferred") == []
    bounce = spool.read("incoming", outcome.bounce_id)
    envelope = bounce.envelope
    assert envelope.sender == ""  # RFC 5321 §4.5.5: bounces go out with <>
    assert [r.address for r in envelope.recipients] == ["alice@sender.test"]
    assert envelope.is_bounce
    assert envelope.size == len(bounce.read_message())
    dsn = email.message_from_bytes(bounce.read_message(), policy=email.policy.default)
    assert dsn.get_content_type() == "multipart/report"
    _, status, original = subparts(dsn)
    [_, carol] = subparts(status)
    assert carol["Final-Recipient"] == "rfc822; carol@dest.test"
    assert carol["Status"] == "5.1.1"
    assert b"Subject: outcome test" in decoded(original)
    assert "bob@dest.test" not in dsn.as_string()  # only the failed recipient is reported


def test_bounce_to_an_smtputf8_sender_is_sent_with_smtputf8(
    config: Config, spool: Spool, states: StateStore
) -> None:
    message = active_message(spool, ["bob@dest.test"], sender="jörg@sender.test", smtputf8=True)
    outcome = apply_results(config, spool, states, message, [result("bob@dest.test", "failed")])
    envelope = spool.read("incoming", outcome.bounce_id).envelope
    assert [r.address for r in envelope.recipients] == ["jörg@sender.test"]
    assert envelope.smtputf8  # RFC 6531 §3.4: the RCPT needs the SMTPUTF8 transaction


def test_sent_and_failed_are_remembered_while_others_are_retried(
    config: Config, spool: Spool, states: StateStore
) -> None:
    rcpts = ["bob@dest.test", "carol@dest.test", "dave@dest.test"]
    message = active_message(spool, rcpts)
    queue_id = message.envelope.queue_id
    first = apply_results(
        config,
        spool,
        states,
        message,
        [
            result("bob@dest.test", "sent"),
            result("carol@dest.test", "failed"),
            result("dave@dest.test", "deferred"),
        ],
    )
    assert not first.removed and first.bounce_id
    saved = states.load(queue_id)
    assert saved is not None and saved.pending() == ["dave@dest.test"]
    assert {r.address: r.status for r in saved.recipients} == {
        "bob@dest.test": "sent",
        "carol@dest.test": "failed",
        "dave@dest.test": "pending",
    }
    # A late or repeated result for a finished recipient changes nothing and bounces nothing.
    message = back_to_active(spool, queue_id)
    second = apply_results(
        config,
        spool,
        states,
        message,
        [result("carol@dest.test", "failed"), result("dave@dest.test", "sent")],
    )
    assert second.removed and not second.bounce_id
    assert names(spool, "incoming") == [first.bounce_id]


def test_null_sender_is_never_bounced(
    config: Config, spool: Spool, states: StateStore, caplog: pytest.LogCaptureFixture
) -> None:
    message = active_message(spool, ["bob@dest.test"], sender="")
    with caplog.at_level(logging.INFO, logger="mta.qmgr"):
        outcome = apply_results(config, spool, states, message, [result("bob@dest.test", "failed")])
    assert outcome.removed and not outcome.bounce_id
    assert names(spool, "incoming") == []
    assert "bounce dropped" in caplog.text


def test_a_failed_bounce_is_not_bounced_again(
    config: Config, spool: Spool, states: StateStore, caplog: pytest.LogCaptureFixture
) -> None:
    message = active_message(spool, ["alice@sender.test"], sender="", is_bounce=True)
    with caplog.at_level(logging.INFO, logger="mta.qmgr"):
        outcome = apply_results(
            config, spool, states, message, [result("alice@sender.test", "failed")]
        )
    assert outcome.removed and not outcome.bounce_id
    assert names(spool, "incoming") == []
    assert "bounce dropped" in caplog.text


def test_expiry_bounces_what_is_still_pending(
    config: Config, spool: Spool, states: StateStore, caplog: pytest.LogCaptureFixture
) -> None:
    message = active_message(spool, ["bob@dest.test", "carol@dest.test"])
    queue_id = message.envelope.queue_id
    born = queue_id_time(queue_id)
    apply_results(
        config,
        spool,
        states,
        message,
        [result("bob@dest.test", "sent"), result("carol@dest.test", "deferred")],
        now=born + 1,
    )
    assert names(spool, "deferred") == [queue_id]
    message = back_to_active(spool, queue_id)
    with caplog.at_level(logging.INFO, logger="mta.qmgr"):
        outcome = apply_results(
            config,
            spool,
            states,
            message,
            [result("carol@dest.test", "deferred", "421 4.4.2 still down")],
            now=born + LIFETIME,
        )
    assert outcome.removed and outcome.bounce_id
    assert names(spool, "deferred") == [] and names(spool, "active") == []
    assert states.load(queue_id) is None
    dsn = email.message_from_bytes(
        spool.read("incoming", outcome.bounce_id).read_message(), policy=email.policy.default
    )
    _, status, _ = subparts(dsn)
    [_, carol] = subparts(status)
    assert carol["Final-Recipient"] == "rfc822; carol@dest.test"
    assert carol["Action"] == "failed"
    assert carol["Status"] == "4.4.7"
    assert "421 4.4.2 still down" in carol["Diagnostic-Code"]
    assert "bob@dest.test" not in dsn.as_string()
    assert "to=<carol@dest.test>" in caplog.text and "status=expired" in caplog.text


def test_not_yet_expired_is_deferred(config: Config, spool: Spool, states: StateStore) -> None:
    message = active_message(spool, ["bob@dest.test"])
    born = queue_id_time(message.envelope.queue_id)
    outcome = apply_results(
        config,
        spool,
        states,
        message,
        [result("bob@dest.test", "deferred")],
        now=born + LIFETIME - 1,
    )
    assert not outcome.removed and not outcome.bounce_id


def test_results_for_unknown_recipients_are_ignored(
    config: Config, spool: Spool, states: StateStore
) -> None:
    message = active_message(spool, ["bob@dest.test"])
    outcome = apply_results(
        config,
        spool,
        states,
        message,
        [result("mallory@dest.test", "sent"), result("bob@dest.test", "deferred")],
    )
    assert not outcome.removed
    saved = states.load(message.envelope.queue_id)
    assert saved is not None
    assert [r.address for r in saved.recipients] == ["bob@dest.test"]
