"""Which notifications a sender asked for (mta/qmgr/notify.py) and the report's Status class
for each action (mta/qmgr/dsn.py), read back with the ``email`` package."""

from __future__ import annotations

import email
import email.policy

import pytest

from mta.qmgr import notify
from mta.qmgr.dsn import Notice, build_report
from mta.queue.envelope import Envelope, Recipient
from mta.queue.results import RecipientResult

ENVELOPE = Envelope(
    queue_id="Q1",
    sender="a@x.test",
    recipients=[
        Recipient(address="plain@y.test"),
        Recipient(address="never@y.test", params={"NOTIFY": "NEVER"}),
        Recipient(address="all@y.test", params={"NOTIFY": "success,failure,delay"}),
    ],
)


@pytest.mark.parametrize(
    "address, wanted",
    [
        ("plain@y.test", {"FAILURE", "DELAY"}),  # no NOTIFY: as Postfix, no success notice
        ("never@y.test", set()),
        ("all@y.test", {"SUCCESS", "FAILURE", "DELAY"}),
    ],
)
def test_wants(address: str, wanted: set[str]) -> None:
    words = {"SUCCESS", "FAILURE", "DELAY"}
    assert {w for w in words if notify.wants(ENVELOPE, address, w)} == wanted


@pytest.mark.parametrize(
    "action, dsn, status",
    [
        ("delayed", "4.4.1", "4.4.1"),
        ("delayed", "", "4.0.0"),
        ("relayed", "2.1.5", "2.1.5"),
        ("delivered", "5.0.0", "2.0.0"),
        ("failed", "4.4.7", "4.4.7"),
        ("failed", "2.0.0", "5.0.0"),
    ],
)
def test_status_has_the_class_of_the_action(action: str, dsn: str, status: str) -> None:
    result = RecipientResult(address="b@y.test", status="sent", dsn=dsn, reply="250 ok")
    data = build_report(
        hostname="mx.test",
        queue_id="Q1",
        sender="a@x.test",
        arrival=1_790_000_000.0,
        notices=[Notice(result, action)],
        original=b"Subject: s\r\n\r\n",
        retry_until=1_790_400_000.0,
        now=1_790_000_060.0,
    )
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert not message.defects
    _, report, _ = message.get_payload()  # type: ignore[misc]
    _, block = report.get_payload()
    assert (block["Action"], block["Status"]) == (action, status)
    assert (block["Will-Retry-Until"] is not None) == (action == "delayed")
