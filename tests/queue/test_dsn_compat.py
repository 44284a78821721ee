"""Queue records written before the DSN extension stay readable, and the DSN parameters
survive a round trip through the envelope; the per-message state keeps ``delay_warned``."""

from __future__ import annotations

from pathlib import Path

import msgspec

from mta.queue.envelope import Envelope, Recipient, decode_envelope, encode_envelope
from mta.queue.results import RecipientResult
from mta.queue.state import MessageState, RecipientState, StateStore


def test_old_envelope_without_params_decodes() -> None:
    old = msgspec.msgpack.encode(
        {"queue_id": "Q1", "sender": "a@x.test", "recipients": [{"address": "b@y.test"}]}
    )
    envelope = decode_envelope(old)
    assert envelope.mail_params == {} and envelope.recipients[0].params == {}


def test_dsn_parameters_round_trip_in_the_envelope() -> None:
    envelope = Envelope(
        queue_id="Q1",
        sender="a@x.test",
        recipients=[Recipient(address="b@y.test", params={"NOTIFY": "NEVER", "ORCPT": "rfc822;b"})],
        mail_params={"RET": "HDRS", "ENVID": "x+2B1"},
    )
    assert decode_envelope(encode_envelope(envelope)) == envelope


def test_old_state_file_reads_as_not_warned_and_the_flag_persists(tmp_path: Path) -> None:
    store = StateStore(str(tmp_path))
    old = {"queue_id": "Q1", "recipients": [{"address": "b@y.test"}], "attempts": 2}
    Path(store.path("Q1")).write_bytes(msgspec.msgpack.encode(old))
    state = store.load("Q1")
    assert state is not None and state.attempts == 2 and not state.delay_warned
    store.save(
        MessageState(
            queue_id="Q1", recipients=[RecipientState(address="b@y.test")], delay_warned=True
        )
    )
    reloaded = store.load("Q1")
    assert reloaded is not None and reloaded.delay_warned


def test_old_result_decodes_with_no_success_notice() -> None:
    old = msgspec.msgpack.encode({"address": "b", "status": "sent", "dsn": "2.0.0", "reply": "ok"})
    result = msgspec.msgpack.decode(old, type=RecipientResult)
    assert not result.dsn_passed and result.success_action == ""
