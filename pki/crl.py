"""Certificate revocation lists signed by the bundled CA.

The inventory is the source of truth for revocation; a CRL is a signed export
of it for verifiers other than the gateway (mail clients, other services).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from cryptography import x509

from pki.ca import BACKDATE, MAX_DAYS, PrivateKey, _authority_key_id, _hash_for

# RFC 5280 5.3.1 reason names. certificateHold/removeFromCRL (suspension) and the
# CA/AA compromise codes do not apply to a mini-CA's end-entity certificates.
REVOCATION_REASONS = (
    "unspecified",
    "keyCompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
    "privilegeWithdrawn",
)


def check_reason(reason: str) -> str:
    """The reason unchanged if it is one we record; ValueError naming the choices otherwise."""
    if reason not in REVOCATION_REASONS:
        raise ValueError(
            f"unknown revocation reason {reason!r} (one of: {', '.join(REVOCATION_REASONS)})"
        )
    return reason


def crl_number() -> int:
    """Microseconds since the epoch.

    RFC 5280 5.2.3 wants CRL numbers to increase with each CRL. Deriving them from
    the clock needs no counter in the database, so any admin on any machine
    sharing the inventory gets a number above every earlier CRL, and two builds
    in the same second still differ. Only a clock set back breaks it.
    """
    return time.time_ns() // 1000


def _entry(serial: int, revoked_at: datetime, reason: str | None) -> x509.RevokedCertificate:
    builder = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(revoked_at)
    # RFC 5280 5.3.1: leave the reason out rather than say "unspecified".
    if reason is not None and check_reason(reason) != "unspecified":
        builder = builder.add_extension(x509.CRLReason(x509.ReasonFlags(reason)), critical=False)
    return builder.build()


def build_crl(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    revoked: list[tuple[int, datetime, str | None]],
    *,
    next_update_days: int = 7,
) -> x509.CertificateRevocationList:
    """A CRL listing `(serial, revoked_at, reason)` entries, valid for `next_update_days`.

    Verifiers that require a fresh CRL reject it after nextUpdate, so it has to be
    rebuilt (e.g. from cron) at least that often.
    """
    if not 1 <= next_update_days <= MAX_DAYS:
        raise ValueError(f"next_update_days must be 1 to {MAX_DAYS}, not {next_update_days}")
    now = datetime.now(UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - BACKDATE)
        .next_update(now + timedelta(days=next_update_days))
        .add_extension(x509.CRLNumber(crl_number()), critical=False)
        .add_extension(_authority_key_id(ca_cert), critical=False)
    )
    for serial, revoked_at, reason in revoked:
        builder = builder.add_revoked_certificate(_entry(serial, revoked_at, reason))
    return builder.sign(ca_key, _hash_for(ca_key))
