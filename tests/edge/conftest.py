"""Fixtures of the edge tests: a test CA with the relay's certificate (trustme), and haproxy
instances stopped after the test."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from tests.edge.haproxy import Frontend, Haproxy


@dataclass
class Certs:
    ca: trustme.CA
    cert: Path  # the chain, PEM
    key: Path

    def issue(self) -> None:
        """A new certificate (new serial) for the relay, written over the same files."""
        issued = self.ca.issue_cert("mx.test", "127.0.0.1", "127.0.0.3")
        self.cert.write_bytes(b"".join(pem.bytes() for pem in issued.cert_chain_pems))
        issued.private_key_pem.write_to_path(str(self.key))

    def client(self, maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
        """A client context that trusts the test CA (and checks the host name)."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        if maximum is not None:
            context.maximum_version = maximum
        return context


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    made = Certs(trustme.CA(), tmp_path / "relay-cert.pem", tmp_path / "relay-key.pem")
    made.issue()
    return made


@pytest.fixture
def haproxy_factory(tmp_path: Path) -> Iterator[Callable[[list[Frontend]], Haproxy]]:
    started: list[Haproxy] = []

    def start(frontends: list[Frontend]) -> Haproxy:
        workdir = tmp_path / f"haproxy{len(started)}"
        workdir.mkdir()
        started.append(Haproxy(workdir, frontends))
        return started[-1].start()

    yield start
    for proxy in started:
        proxy.stop()
