"""Damaged spool files at rest (issue 10, items 2 and 3): flipped octets in a segment record's
prefix, in a message body inside a segment and in a message file of its own, and a record
cut short.  In each case a real relay started on the damaged spool delivers every intact
message, copies the damaged one to ``corrupt/``, logs it (with its offset when it is a
segment span), counts it in ``mta_queue_corrupt_total`` and never delivers it."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from mta.queue.segment import PREFIX_SIZE
from tests.delivery.sink import CaptureSink
from tests.faults.integrity_helpers import (
    body,
    fill_spool,
    flip,
    relay_config,
    segment_files,
)
from tests.helpers import MtaProcess, wait_until
from tests.master import scrape

MESSAGES = 10
DAMAGED = 4  # the fifth message of the segment is the one damaged


def queue_ten(spool: Path) -> tuple[list[str], Path, list[int]]:
    """Ten small messages in one segment: their ids, the segment, each record's offset."""
    ids = fill_spool(spool, [body(f"msg-{i}") for i in range(MESSAGES)])
    [segment] = segment_files(spool)
    data = segment.read_bytes()
    offsets = [m.start() for m in re.finditer(rb"MTRC", data)]
    assert len(offsets) == MESSAGES
    return ids, segment, offsets


def delivered_markers(sink: CaptureSink) -> list[str]:
    return sorted(
        m.data.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode() for m in sink.messages
    )


def start_relay(
    mta_factory: Callable[..., MtaProcess], sink: CaptureSink, spool: Path
) -> MtaProcess:
    """A relay to ``sink`` on the damaged ``spool``."""
    relay: MtaProcess = mta_factory({**relay_config(sink.port), "queue": {"path": str(spool)}})
    return relay


def expect_intact_delivered(sink: CaptureSink, damaged: str) -> None:
    sink.wait_for(MESSAGES - 1, timeout=20)
    expected = sorted(f"msg-{i}" for i in range(MESSAGES) if f"msg-{i}" != damaged)
    assert delivered_markers(sink) == expected


def corrupt_count(relay: MtaProcess, reason: str) -> float:
    return scrape(relay.metrics_port).value("mta_queue_corrupt_total", reason=reason)


def test_flipped_bytes_in_a_record_prefix_strand_nothing_after_it(
    mta_factory: Callable[..., MtaProcess], sink: CaptureSink, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    _, segment, offsets = queue_ten(spool)
    flip(segment, offsets[DAMAGED] + 2, 8)  # eight octets of the prefix: magic and length
    relay = start_relay(mta_factory, sink, spool)
    expect_intact_delivered(sink, f"msg-{DAMAGED}")
    saved = spool / "corrupt" / f"{segment.name}.{offsets[DAMAGED]}"
    wait_until(saved.exists)
    assert saved.stat().st_size == offsets[DAMAGED + 1] - offsets[DAMAGED]
    log = relay.log()
    assert f"damaged record at offset {offsets[DAMAGED]}" in log
    assert corrupt_count(relay, "record") == 1
    assert len(sink.messages) == MESSAGES - 1  # never delivered, not even later


def test_flipped_bytes_in_a_message_body_in_a_segment_are_caught_by_the_checksum(
    mta_factory: Callable[..., MtaProcess], sink: CaptureSink, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    ids, segment, offsets = queue_ten(spool)
    body_at = offsets[DAMAGED] + PREFIX_SIZE + 6 + len(b"Subject: msg-4\r\n\r\n")
    flip(segment, body_at, 3)  # "msg" in the body: the frame is intact, the text is not
    relay = start_relay(mta_factory, sink, spool)
    expect_intact_delivered(sink, f"msg-{DAMAGED}")
    saved = spool / "corrupt" / ids[DAMAGED]
    wait_until(saved.exists)
    wait_until(lambda: corrupt_count(relay, "checksum") == 1)
    log = relay.log()
    assert f"{ids[DAMAGED]}: copied to corrupt/ (offset {offsets[DAMAGED] + PREFIX_SIZE})" in log
    assert "checksum mismatch" in log
    assert len(sink.messages) == MESSAGES - 1
    assert not any(b"\x92\x8c\x98" in m.data for m in sink.messages)  # the altered octets


def test_flipped_bytes_in_a_message_file_of_its_own_are_caught_by_the_checksum(
    mta_factory: Callable[..., MtaProcess], sink: CaptureSink, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    bodies = [body(f"msg-{i}", 2_000_000 if i in (3, DAMAGED) else 0) for i in range(MESSAGES)]
    ids = fill_spool(spool, bodies)
    large = spool / "incoming" / ids[DAMAGED]
    assert large.exists() and (spool / "incoming" / ids[3]).exists()  # files of their own
    flip(large, large.stat().st_size // 2, 1)  # one octet deep inside a 1.6 MB body
    relay = start_relay(mta_factory, sink, spool)
    expect_intact_delivered(sink, f"msg-{DAMAGED}")
    saved = spool / "corrupt" / ids[DAMAGED]
    wait_until(saved.exists)
    wait_until(lambda: corrupt_count(relay, "checksum") == 1)
    log = relay.log()
    assert f"{ids[DAMAGED]}: moved to corrupt/" in log and "checksum mismatch" in log
    assert len(sink.messages) == MESSAGES - 1


def test_a_record_cut_short_is_logged_and_kept_and_the_rest_delivered(
    mta_factory: Callable[..., MtaProcess], sink: CaptureSink, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    _, segment, offsets = queue_ten(spool)
    last = MESSAGES - 1
    cut_at = offsets[last] + 50
    with open(segment, "r+b") as f:
        f.truncate(cut_at)  # its writer died in the middle of writing it
    relay = start_relay(mta_factory, sink, spool)
    expect_intact_delivered(sink, f"msg-{last}")
    saved = spool / "corrupt" / f"{segment.name}.{offsets[last]}"
    wait_until(saved.exists)
    assert saved.stat().st_size == 50
    log = relay.log()
    assert f"cut record at offset {offsets[last]}" in log
    assert corrupt_count(relay, "cut") == 1
    assert len(sink.messages) == MESSAGES - 1
