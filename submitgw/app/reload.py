"""Live reload (SIGHUP): the configuration and the TLS files read again, checked whole,
then swapped in for new connections.

`prepare` does every read and every build before anything changes, and off the event
loop: the TOML (with the command line's flags over it), the certificate and its key
(which must match), the CA, new TLS contexts, and, when their settings changed, an
argon2 hasher and a DNS resolver. Anything wrong refuses the whole reload with one
`ConfigError` naming it, and the gateway keeps what it had. `App.reload` then applies
the result on the event loop in one step, for connections accepted from then on.

Some settings cannot change under a running process (`RESTART_KEYS`): a listen address
is a bound socket, the database URL its pools, `auth.workers` the argon2 threads, and
the site's `idle_timeout` is also aiohttp's keep-alive clock, fixed when the site
started. Those keep their old values and are reported as needing a restart.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dns.asyncresolver
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from OpenSSL import SSL

from submitgw import tls
from submitgw.config import Config, ConfigError, TlsConfig, certificates_needed, changed_keys
from submitgw.services.authn import Hashing
from submitgw.services.dns import make_resolver
from submitgw.smtp import tlslayer

RESTART_KEYS = (
    "submission.listen",
    "submissions.listen",
    "selfservice.listen",
    "selfservice.idle_timeout",
    "database.url",
    "auth.workers",
    "metrics.listen",
    "metrics.max_connections",
    "metrics.max_connections_per_ip",
    "audit.database",
    "audit.retention_days",
    "audit.flush_interval",
    "audit.batch_size",
    "audit.max_queue",
    "audit.shutdown_timeout",
    "server.workers",
)
_ARGON2 = ("auth.argon2_time_cost", "auth.argon2_memory_kib", "auth.argon2_parallelism")


@dataclass(frozen=True)
class TlsFiles:
    """What the `[tls]` files held when last read: a digest per file (to tell a changed
    file under an unchanged name), the server certificate and the CA."""

    digests: dict[str, str]
    cert: x509.Certificate
    ca: x509.Certificate | None


def _read(path: Path, key: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read [tls] {key} {path}: {exc.strerror}") from exc


def _matches(cert: x509.Certificate, key: PrivateKeyTypes) -> bool:
    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return cert.public_key().public_bytes(der, spki) == key.public_key().public_bytes(der, spki)


def read_tls_files(cfg: TlsConfig, *, need_ca: bool) -> TlsFiles:
    """Read and check the server certificate, its key and (when asked) the CA; a
    `ConfigError` names the file at fault."""
    cert_pem, key_pem = _read(cfg.cert, "cert"), _read(cfg.key, "key")
    try:
        cert = x509.load_pem_x509_certificates(cert_pem)[0]
    except ValueError as exc:
        raise ConfigError(f"[tls] cert {cfg.cert} holds no PEM certificate") from exc
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError as exc:
        raise ConfigError(f"[tls] key {cfg.key} is encrypted; the gateway needs it plain") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"[tls] key {cfg.key} is not a PEM private key") from exc
    if not _matches(cert, key):
        raise ConfigError(f"[tls] key {cfg.key} does not match [tls] cert {cfg.cert}")
    digests = {
        "tls.cert": hashlib.sha256(cert_pem).hexdigest(),
        "tls.key": hashlib.sha256(key_pem).hexdigest(),
    }
    ca = None
    if need_ca:
        ca_pem = _read(cfg.ca_cert, "ca_cert")
        try:
            ca = x509.load_pem_x509_certificate(ca_pem)
        except ValueError as exc:
            raise ConfigError(f"[tls] ca_cert {cfg.ca_cert} holds no PEM certificate") from exc
        digests["tls.ca_cert"] = hashlib.sha256(ca_pem).hexdigest()
    return TlsFiles(digests, cert, ca)


def keep_restart_settings(old: Config, new: Config) -> Config:
    """`new`, with the settings of `RESTART_KEYS` as they are in `old`."""
    return new.replace(
        submission=dataclasses.replace(new.submission, listen=old.submission.listen),
        submissions=dataclasses.replace(new.submissions, listen=old.submissions.listen),
        selfservice=dataclasses.replace(
            new.selfservice,
            listen=old.selfservice.listen,
            idle_timeout=old.selfservice.idle_timeout,
        ),
        database=old.database,
        server=dataclasses.replace(new.server, workers=old.server.workers),
        auth=dataclasses.replace(new.auth, workers=old.auth.workers),
        audit=old.audit,
        metrics=dataclasses.replace(
            new.metrics,
            listen=old.metrics.listen,
            max_connections=old.metrics.max_connections,
            max_connections_per_ip=old.metrics.max_connections_per_ip,
        ),
    )


@dataclass(frozen=True)
class Prepared:
    """A reload ready to apply: every file read, every context built."""

    cfg: Config
    changed: list[str]
    needs_restart: list[str]
    files: TlsFiles
    # Per SMTP listener that is on: its new pyOpenSSL context.
    contexts: dict[str, SSL.Context]
    site_context: ssl.SSLContext | None
    hashing: Hashing | None
    resolver: dns.asyncresolver.Resolver | None


def build_contexts(cfg: Config) -> tuple[dict[str, SSL.Context], ssl.SSLContext | None]:
    """New TLS contexts for the listeners that are on; never one a connection used."""
    try:
        contexts = {
            name: tlslayer.server_context(cfg.tls, settings.client_certificates)
            for name, settings in cfg.listeners().items()
            if settings.listen is not None
        }
        site = None
        if cfg.selfservice.listen is not None:
            site = tls.server_context(cfg.tls, cfg.selfservice.client_certificates)
    except (SSL.Error, ssl.SSLError, OSError, ValueError) as exc:
        reason = tlslayer.reason_of(exc) if isinstance(exc, SSL.Error) else str(exc)
        raise ConfigError(
            f"[tls] cert {cfg.tls.cert} and key {cfg.tls.key} refused by OpenSSL: {reason}"
        ) from exc
    return contexts, site


def prepare(load: Callable[[], Config], current: Config, files: TlsFiles) -> Prepared:
    """Blocking (file reads, maybe one argon2 hash): run it off the event loop.

    `current` is the configuration in force, as configured (before any port 0 was
    bound); raises `ConfigError` when anything new is unusable.
    """
    wanted = load()
    needs_restart = [key for key in changed_keys(current, wanted) if key in RESTART_KEYS]
    cfg = keep_restart_settings(current, wanted)
    new_files = read_tls_files(cfg.tls, need_ca=certificates_needed(cfg))
    contexts, site_context = build_contexts(cfg)
    changed = changed_keys(current, cfg)
    for key, digest in new_files.digests.items():
        if key not in changed and key in files.digests and files.digests[key] != digest:
            changed.append(key)
    hashing = Hashing.make(cfg.auth) if any(key in changed for key in _ARGON2) else None
    resolver = make_resolver(cfg.dns) if cfg.dns != current.dns else None
    return Prepared(
        cfg, changed, needs_restart, new_files, contexts, site_context, hashing, resolver
    )
