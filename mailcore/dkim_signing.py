"""DKIM signatures (RFC 6376) on the MIME bytes a transport sends, RSA and Ed25519 (RFC 8463).

Keys are read and checked once per process (:func:`load_keys`, a :class:`ConfigError` naming the
variable when one is missing or unusable); :class:`DkimSigner` then signs each message with every
key of its From domain: dkimpy canonicalises, ``cryptography`` signs with the key parsed at
start-up (:mod:`mailcore.dkim_header`). Mailtrap's HTTP API builds and signs its own MIME: only
transports that send our bytes (SMTP, outbox) carry these signatures.
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from .config import DkimSettings, Settings
from .dkim_header import ED25519, RSA, PrivateKey, SigningKey, signature_fields
from .envfields import ConfigError
from .mime import Envelope

log = logging.getLogger("email_service.dkim")

#: Headers signed when present (each instance of each). Signing List-Unsubscribe(-Post) keeps a
#: forwarder from swapping the unsubscribe target; Gmail's feedback loop counts Feedback-ID only
#: when it is signed; X-Email-Service-* are ours.
SIGNED_HEADERS = (
    b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"reply-to", b"mime-version",
    b"content-type", b"list-unsubscribe", b"list-unsubscribe-post", b"in-reply-to",
    b"references", b"list-id", b"list-help", b"list-subscribe", b"list-post", b"list-owner",
    b"list-archive", b"feedback-id", b"auto-submitted", b"precedence",
)
_OURS = b"x-email-service-"
#: RFC 8301: verifiers must reject RSA keys under 1024 bits; under 2048 is weak today.
MIN_RSA_BITS = 2048
#: relaxed/relaxed: relays that re-fold headers or trim trailing spaces do not break it.
_CANONICALIZE = (b"relaxed", b"relaxed")


@dataclass(frozen=True)
class DkimKey:
    """One signing key, parsed once.

    Parameters:
      domain: the ``d=`` domain (A-labels).
      selector: the ``s=`` selector.
      algorithm: ``rsa-sha256`` or ``ed25519-sha256``.
      private: the parsed private key (``cryptography``).
      public: the ``p=`` value of the DNS record.
      source: the file it came from (for logs).
    """

    domain: str
    selector: str
    algorithm: bytes
    private: PrivateKey = field(repr=False)  # never in a log line or traceback
    public: str
    source: Path

    @property
    def signing(self) -> SigningKey:
        return SigningKey(self.domain.encode("ascii"), self.selector.encode("ascii"),
                          self.algorithm, self.private)

    @property
    def dns_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    @property
    def dns_record(self) -> str:
        """The TXT record to publish at :attr:`dns_name`."""
        kind = "rsa" if self.algorithm == RSA else "ed25519"
        return f"v=DKIM1; k={kind}; p={self.public}"


def read_key(path: Path, variable: str, domain: str, selector: str) -> DkimKey:
    """Read and check one PEM key; raises :class:`ConfigError` naming ``variable``."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{variable}: cannot read {str(path)!r} ({exc.strerror})") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{variable}: {str(path)!r} is not an unencrypted PEM private key "
                          f"({exc})") from None
    private: PrivateKey
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise ConfigError(f"{variable}: {str(path)!r} is a {key.key_size}-bit RSA key; "
                              f"DKIM keys need at least {MIN_RSA_BITS} bits")
        private = key
        public = key.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
        algorithm = RSA
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        private = key
        public = key.public_key().public_bytes(serialization.Encoding.Raw,
                                               serialization.PublicFormat.Raw)
        algorithm = ED25519
    else:
        raise ConfigError(f"{variable}: {str(path)!r} is a {type(key).__name__}; DKIM signs "
                          "with RSA or Ed25519 keys")
    return DkimKey(domain=domain, selector=selector, algorithm=algorithm, private=private,
                   public=base64.b64encode(public).decode("ascii"), source=path)


def load_keys(settings: DkimSettings) -> dict[str, tuple[DkimKey, ...]]:
    """Every domain of ``DKIM_DOMAINS`` with its keys: ``<DKIM_KEYS_DIR>/<domain>/<selector>.pem``
    for each algorithm's selector, else the shared ``DKIM_PRIVATE_KEY_FILE`` /
    ``DKIM_ED25519_KEY_FILE``. A domain with no key, or any unusable key, stops the process."""
    shared = {
        RSA: ("DKIM_PRIVATE_KEY_FILE", settings.rsa_key_file, settings.rsa_selector),
        ED25519: ("DKIM_ED25519_KEY_FILE", settings.ed25519_key_file,
                  settings.ed25519_selector),
    }
    # A shared file that is set is checked even when every domain has its own key.
    shared_keys = {algorithm: read_key(file, variable, "", selector)
                   for algorithm, (variable, file, selector) in shared.items() if file}
    keys: dict[str, tuple[DkimKey, ...]] = {}
    for domain in sorted(settings.domains):
        found: list[DkimKey] = []
        for algorithm, (variable, _file, selector) in shared.items():
            own = settings.keys_dir / domain / f"{selector}.pem"
            if own.exists():
                key = read_key(own, "DKIM_KEYS_DIR", domain, selector)
            elif algorithm in shared_keys:
                key = replace(shared_keys[algorithm], domain=domain)
            else:
                continue
            if key.algorithm != algorithm:
                raise ConfigError(
                    f"{'DKIM_KEYS_DIR' if own.exists() else variable}: {str(key.source)!r} "
                    f"holds a {key.algorithm.decode()} key where the selector {selector!r} "
                    f"names {algorithm.decode()} keys")
            found.append(key)
        if not found:
            raise ConfigError(
                f"DKIM_DOMAINS: no key for {domain}: put one at "
                f"{settings.keys_dir / domain / (settings.rsa_selector + '.pem')} (or "
                f"{settings.ed25519_selector}.pem), or set DKIM_PRIVATE_KEY_FILE / "
                "DKIM_ED25519_KEY_FILE")
        keys[domain] = tuple(found)
    return keys


def signed_headers(present: list[bytes]) -> list[bytes]:
    """The ``h=`` list for a message's lower-cased header names, in order: each instance of
    :data:`SIGNED_HEADERS` and of ours, and From once more (oversigned: a From added later
    breaks the signature)."""
    include = [name for name in present if name in SIGNED_HEADERS or name.startswith(_OURS)]
    include.append(b"from")
    return include


def signer_for(settings: Settings) -> DkimSigner | None:
    """The DKIM signer, keys read now; ``None`` without ``DKIM_DOMAINS`` or when no transport
    sends our MIME bytes (Mailtrap's API builds and signs its own message)."""
    if not {"smtp", "outbox"} & set(settings.transports):
        return None
    return DkimSigner.from_settings(settings.dkim)


class DkimSigner:
    """Signs messages with the keys of their From domain; others go out unsigned.

    Parameters:
      keys: the keys per domain (:func:`load_keys`).
      subdomains: a subdomain's mail takes the nearest listed parent's keys.
      canonicalize: header and body canonicalisation (``relaxed``/``simple`` each).
    """

    def __init__(self, keys: Mapping[str, Sequence[DkimKey]], *, subdomains: bool = False,
                 canonicalize: tuple[bytes, bytes] = _CANONICALIZE) -> None:
        self.keys = {domain.lower(): tuple(found) for domain, found in keys.items()}
        self._signing = {domain: tuple(key.signing for key in found)
                         for domain, found in self.keys.items()}
        self.subdomains = subdomains
        self.canonicalize = canonicalize
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: DkimSettings) -> DkimSigner | None:
        """The signer ``DKIM_*`` configure, or ``None`` when ``DKIM_DOMAINS`` is empty."""
        if not settings.domains:
            return None
        return cls(load_keys(settings), subdomains=settings.subdomains)

    def keys_for(self, domain: str) -> tuple[DkimKey, ...]:
        found = self._domain_of(domain.lower())
        return self.keys[found] if found else ()

    def _domain_of(self, domain: str) -> str | None:
        """The listed domain whose keys sign ``domain``'s mail (lower-cased), if any."""
        if domain in self.keys:
            return domain
        if self.subdomains:
            labels = domain.split(".")
            for start in range(1, len(labels) - 1):
                parent = ".".join(labels[start:])
                if parent in self.keys:
                    return parent
        return None

    def sign(self, raw: bytes, from_domain: str) -> bytes:
        """``raw`` with one DKIM-Signature per key of ``from_domain`` prepended (unchanged, and
        a warning logged once per domain, when it has none)."""
        domain = self._domain_of(from_domain.lower())
        if domain is None:
            self._warn_unsigned(from_domain.lower())
            return raw
        return signature_fields(raw, self._signing[domain], signed_headers,
                                self.canonicalize) + raw

    def sign_envelope(self, envelope: Envelope) -> Envelope:
        # The From address picks the key (the envelope sender may become a bounce address).
        sender = envelope.content.sender.email if envelope.content else envelope.sender
        return replace(envelope, raw=self.sign(envelope.raw, sender.rpartition("@")[2]))

    def _warn_unsigned(self, domain: str) -> None:
        with self._lock:
            if domain in self._warned:
                return
            self._warned.add(domain)
        log.warning("DKIM: mail from %s goes out unsigned (not in DKIM_DOMAINS)", domain,
                    extra={"dkim_domain": domain})
