"""Revocation reasons and CRL entries; `CA.crl` signs the list.

The inventory is the source of truth for revocation; a CRL is a signed export
of it for verifiers other than the gateway (mail clients, other services).
"""

from __future__ import annotations

import time
from datetime import datetime

from cryptography import x509

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


def revoked_entry(serial: int, revoked_at: datetime, reason: str | None) -> x509.RevokedCertificate:
    """One CRL entry; RFC 5280 5.3.1: the reason is left out rather than said "unspecified"."""
    builder = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(revoked_at)
    if reason is not None and check_reason(reason) != "unspecified":
        builder = builder.add_extension(x509.CRLReason(x509.ReasonFlags(reason)), critical=False)
    return builder.build()
