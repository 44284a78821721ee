"""DKIM signing of outbound mail (RFC 6376, RFC 8463), with dkimpy: keys, signing, keygen.

**Which messages.**  A message is signed when the domain of its ``From:`` header (or a
parent of it) has a key in ``[dkim.keys]``; the most specific domain wins.  The From:
header, not the envelope sender, because that is the domain DMARC aligns with and the one
receivers show, and it is what Postfix with OpenDKIM signs by; the envelope sender is empty
for bounces and often a VERP or bounce-service address.  Bounces the queue manager writes
come ``From: MAILER-DAEMON@<hostname>``, so they are signed with the key of the relay's own
domain (the hostname's or a parent's) when one is configured.

**Once per message, not per attempt.**  The delivery agent signs on a message's first
attempt, before it is sent to any next hop (every destination of that attempt gets the same
signature).  When the attempt leaves recipients deferred the ``DKIM-Signature`` header is
saved beside the message, in ``dkim/<queue ID>`` in the spool, and later attempts (in any
delivery process, after restarts) send that header instead of signing again; the spool
removes it with the message (:meth:`mta.queue.spool.Spool.remove`).  Messages delivered at
the first attempt, nearly all of them, cost no file.  The saved header is not fsynced: lost
in a crash, the message is signed afresh at its next attempt, still with one signature.
Signing here rather than in smtpd keeps the CPU cost off the receiving path and signs the
queue manager's bounces by the same code; a message is never signed twice by us because
the signature is prepended to what is sent, never written into the message file.

**Keys.**  RSA (PEM, PKCS#1 or PKCS#8; rsa-sha256) or Ed25519 (PKCS#8 PEM or dkimpy's
base64 32-octet seed; ed25519-sha256): the algorithm follows the key.  Canonicalization is
relaxed/relaxed.  Every key is read and parsed by :func:`load_signer` at start (``serve``,
``check-config``, reload): a key that cannot be read or parsed is a ``ConfigError`` naming
the ``dkim.keys`` entry and the file.

**Cost.**  dkimpy signs RSA with Python's ``pow`` (about 11 ms of CPU for a 2048-bit key
here); :func:`_rsa_sign_with_openssl` takes its place, the same RSASSA-PKCS1-v1_5 signature
made by OpenSSL through ``cryptography``, the same bytes, and :func:`_parse_key_once` spares
dkimpy parsing the PEM key in Python at every signature.  Measured (``python -m bench.dkim``,
``Signer.sign`` on the bench's 1 KiB message, CPU time, loaded two-core machine): RSA 2048
about 1.4 ms (0.8 ms of it OpenSSL's private-key operation, which releases the GIL),
Ed25519 about 0.4 ms (nearly all dkimpy's canonicalisation and hashing, in Python).  The
delivery agent has them made by its signing thread (:mod:`mta.delivery.sign_thread`, which
says why), not on its event loop.

Failures: a message whose header section dkimpy cannot parse is sent unsigned, logged.
"""

from __future__ import annotations

import base64
import email.utils
import logging
import os
from dataclasses import dataclass

import dkim
import dkim.crypto

from mta.config import Config, ConfigError, DkimConfig

__all__ = ["DkimKey", "Signer", "generate_key", "load_signer", "read_key"]

log = logging.getLogger("mta.delivery")

SAVED_DIR = "dkim"  # in the spool: the signature of a message that is being retried
MAX_HEADER_SECTION = 1 << 20  # octets searched for the From: header


@dataclass(frozen=True, slots=True)
class DkimKey:
    domain: str
    selector: str
    algorithm: bytes  # b"rsa-sha256" or b"ed25519-sha256"
    private: bytes  # as dkimpy takes it: PEM (RSA) or the base64 seed (Ed25519)


def read_key(path: str) -> tuple[bytes, bytes]:
    """(algorithm, key as dkimpy takes it) of the private key in ``path``; OSError if it
    cannot be read, ValueError if it is no RSA or Ed25519 private key."""
    with open(path, "rb") as f:
        data = f.read(1 << 16)
    if b"-----BEGIN" not in data:
        try:
            seed = base64.b64decode(data.strip(), validate=True)
        except ValueError:
            seed = b""
        if len(seed) != 32:
            raise ValueError("neither a PEM private key nor a base64 Ed25519 seed")
        return b"ed25519-sha256", base64.b64encode(seed)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    key = serialization.load_pem_private_key(data, password=None)
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 1024:  # RFC 8301 §3.2: verifiers must not accept less
            raise ValueError(f"an RSA key of {key.key_size} bits is too short (1024 at least)")
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        return b"rsa-sha256", pem
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return b"ed25519-sha256", base64.b64encode(raw)
    raise ValueError(f"a {type(key).__name__}: only RSA and Ed25519 keys sign DKIM")


def load_signer(config: Config) -> Signer | None:
    """The signer for ``[dkim]`` (None without keys); ConfigError for a key that cannot be
    read or parsed, naming the entry and the file."""
    keys: dict[str, DkimKey] = {}
    for domain, entry in config.dkim.keys.items():
        where = f'dkim.keys."{domain}".key: {entry.key}'
        try:
            algorithm, private = read_key(entry.key)
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read: {exc.strerror}") from None
        except ValueError as exc:
            raise ConfigError(f"{where}: not a usable private key: {exc}") from None
        name = domain.lower().rstrip(".")
        keys[name] = DkimKey(name, entry.selector, algorithm, private)
    if not keys:
        return None
    return Signer(keys, config.dkim, os.path.join(config.queue.path, SAVED_DIR))


class Signer:
    def __init__(self, keys: dict[str, DkimKey], settings: DkimConfig, saved_dir: str) -> None:
        self.keys = keys
        self.saved_dir = saved_dir
        oversign = {h.lower() for h in settings.oversign}
        self.signed = frozenset(h.lower().encode() for h in settings.headers)
        # Oversigning: name the header once more than it occurs (RFC 6376 §8.15).
        self.oversigned = [h.lower().encode() for h in settings.headers if h.lower() in oversign]

    def headers_to_sign(self, fields: list[tuple[bytes, bytes]]) -> list[bytes]:
        """h= for a message with these header fields: each configured field once per
        instance present (RFC 6376 §5.4.2), then the oversigned ones once more.  An absent
        field is not named: that would forbid adding it (as oversigning does) and turn
        h= into the configuration's list instead of the message's."""
        names = [name.lower() for name, _ in fields]
        return [name for name in names if name in self.signed] + self.oversigned

    def key_for(self, message: bytes) -> DkimKey | None:
        """The key of the From: domain or its nearest parent that has one."""
        domain = from_domain(message)
        while domain:
            key = self.keys.get(domain)
            if key is not None:
                return key
            domain = domain.partition(".")[2]
        return None

    def sign(self, message: bytes) -> bytes | None:
        """The ``DKIM-Signature`` header field (CRLF-terminated) for ``message``, or None
        when no key is for its From: domain or it cannot be signed."""
        key = self.key_for(message)
        if key is None:
            return None
        try:
            parsed = dkim.DKIM(message, signature_algorithm=key.algorithm)
            return parsed.sign(
                key.selector.encode(),
                key.domain.encode(),
                key.private,
                canonicalize=(b"relaxed", b"relaxed"),
                include_headers=self.headers_to_sign(parsed.headers),
            )
        except dkim.DKIMException as exc:  # a header section dkimpy cannot parse
            log.warning("DKIM signing failed for d=%s: %s; sent unsigned", key.domain, exc)
            return None

    # ----- the signature of a message being retried: spool/dkim/<queue ID> -------------

    def saved(self, queue_id: str) -> bytes | None:
        try:
            with open(os.path.join(self.saved_dir, queue_id), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def save(self, queue_id: str, header: bytes) -> None:
        """Keep ``header`` for the message's later attempts (renamed into place whole)."""
        os.makedirs(self.saved_dir, mode=0o700, exist_ok=True)  # a spool made before 12
        path = os.path.join(self.saved_dir, queue_id)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(header)
        os.replace(tmp, path)


_OPENSSL_KEYS: dict[int, object] = {}  # modulus -> cryptography's RSAPrivateKey
_dkimpy_rsa_sign = dkim.crypto.RSASSA_PKCS1_v1_5_sign


def _rsa_sign_with_openssl(digest: object, private_key: dict[str, int]) -> bytes:
    """dkimpy's ``RSASSA_PKCS1_v1_5_sign(hash, key)`` made by OpenSSL: byte for byte the
    same signature (PKCS#1 v1.5 is deterministic), about ten times less CPU."""
    if getattr(digest, "name", "") != "sha256":
        return _dkimpy_rsa_sign(digest, private_key)  # type: ignore[no-any-return]
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

    key = _OPENSSL_KEYS.get(private_key["modulus"])
    if key is None:
        public = rsa.RSAPublicNumbers(private_key["publicExponent"], private_key["modulus"])
        key = _OPENSSL_KEYS[private_key["modulus"]] = rsa.RSAPrivateNumbers(
            p=private_key["prime1"],
            q=private_key["prime2"],
            d=private_key["privateExponent"],
            dmp1=private_key["exponent1"],
            dmq1=private_key["exponent2"],
            iqmp=private_key["coefficient"],
            public_numbers=public,
        ).private_key()
    assert isinstance(key, rsa.RSAPrivateKey)
    raw = digest.digest()  # type: ignore[attr-defined]
    return key.sign(raw, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))


_PARSED_KEYS: dict[bytes, object] = {}  # PEM -> dkimpy's key (a dict of ints)
_dkimpy_parse_key = dkim.crypto.parse_pem_private_key


def _parse_key_once(pem: bytes) -> object:
    """dkimpy parses the PEM (in Python) at every signature, a seventh of an RSA one's CPU;
    the keys are the few of [dkim.keys], so each is parsed once.  dkimpy only reads it."""
    parsed = _PARSED_KEYS.get(pem)
    if parsed is None:
        parsed = _PARSED_KEYS[pem] = _dkimpy_parse_key(pem)
    return parsed


# dkim.DKIM calls the names it imported from dkim.crypto: replace those.
dkim.RSASSA_PKCS1_v1_5_sign = _rsa_sign_with_openssl  # type: ignore[attr-defined]
dkim.parse_pem_private_key = _parse_key_once  # type: ignore[attr-defined]


def from_domain(message: bytes) -> str | None:
    """The domain of the single address in the From: header, lower case; None if there is
    no From: or it holds other than one address."""
    end = message.find(b"\r\n\r\n", 0, MAX_HEADER_SECTION)
    head = message[: end if end >= 0 else MAX_HEADER_SECTION]
    value: list[bytes] = []
    for line in head.split(b"\r\n"):
        if value and line[:1] in (b" ", b"\t"):
            value.append(line)
        elif value:
            break
        elif line[:5].lower() == b"from:":
            value.append(line[5:])
    if not value:
        return None
    text = b" ".join(value).decode("utf-8", "replace")
    addresses = [a for _, a in email.utils.getaddresses([text]) if a]
    if len(addresses) != 1 or "@" not in addresses[0]:
        return None
    return addresses[0].rpartition("@")[2].lower().rstrip(".")


def generate_key(key_type: str) -> tuple[bytes, str]:
    """A new private key (PEM) and the DNS TXT record's value that publishes its public
    half: RSA 2048 bits (RFC 8301 recommends 2048) or Ed25519 (RFC 8463)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if key_type == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    else:
        private = ed25519.Ed25519PrivateKey.generate()
        public = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem, f"v=DKIM1; k={key_type}; p={base64.b64encode(public).decode()}"
