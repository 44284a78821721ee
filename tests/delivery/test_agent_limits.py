"""The delivery agent's own limits: recipients per transaction and bad routes in config."""

from __future__ import annotations

import smtplib
from collections.abc import Callable
from pathlib import Path

import pytest

from mta.config import ConfigError, load_config
from mta.delivery.agent import DomainLabels
from tests.delivery.sink import CaptureSink
from tests.helpers import MtaProcess, wait_until


@pytest.mark.timeout(120)
def test_recipients_are_split_into_transactions_of_the_configured_size(
    mta_factory: Callable[..., MtaProcess],
) -> None:
    with CaptureSink() as sink:
        relay = mta_factory(
            {
                "delivery": {
                    "relayhost": f"127.0.0.1:{sink.port}",
                    "max_recipients_per_transaction": 3,
                }
            }
        )
        recipients = [f"r{i}@example.test" for i in range(8)]
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
            client.sendmail("a@client.test", recipients, b"Subject: many\r\n\r\nhi\r\n")
        wait_until(lambda: sum(len(c.rcpt_tos) for c in sink.messages) >= 8, timeout=30)
        captured = sink.messages
        assert sorted(len(c.rcpt_tos) for c in captured) == [2, 3, 3]
        assert sorted(r for c in captured for r in c.rcpt_tos) == sorted(recipients)


def test_maildir_route_with_an_unknown_placeholder_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "mta.toml"
    path.write_text('[routes]\n"local.test" = "maildir:/var/mail/{domain}/{mailbox}"\n')
    with pytest.raises(ConfigError, match=r"routes\.local\.test.*\{user\} and \{domain\}"):
        load_config(str(path))


def test_domain_labels_name_the_first_domains_and_call_the_rest_other() -> None:
    labels = DomainLabels(top=2)
    assert labels.label("a@One.test") == "one.test"
    assert labels.label("b@two.test") == "two.test"
    assert labels.label("c@three.test") == "other"
    assert labels.label("d@ONE.TEST") == "one.test"  # seen before: still named
    assert DomainLabels(top=2).label("c@three.test") == "three.test"  # no shared state
