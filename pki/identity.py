"""How certificates are named outside X.509: fingerprints and serial numbers as text.

The inventory, the CLI and the gateway's logs must all spell a certificate the
same way, so these are the only functions that turn one into a string and back.
"""

from __future__ import annotations

import hashlib
import string

from cryptography import x509
from cryptography.hazmat.primitives import serialization

# RFC 5280 4.1.2.2: serial numbers are at most 20 octets.
MAX_SERIAL_HEX_DIGITS = 40


def fingerprint_sha256(cert_or_der: x509.Certificate | bytes) -> str:
    """Lower-case hex SHA-256 of the DER encoding, without colons (what the inventory keys on)."""
    der = (
        cert_or_der.public_bytes(serialization.Encoding.DER)
        if isinstance(cert_or_der, x509.Certificate)
        else bytes(cert_or_der)
    )
    return hashlib.sha256(der).hexdigest()


def format_serial(number: int) -> str:
    """Upper-case hex without colons, leading zeros or `0x`: one spelling per serial."""
    if number <= 0:
        raise ValueError(f"certificate serial numbers are positive, not {number}")
    return f"{number:X}"


def parse_serial(text: str) -> int:
    """Accept a serial as people paste it: any case, with or without colons (openssl style)."""
    digits = text.strip().replace(":", "")
    if (
        not digits
        or len(digits) > MAX_SERIAL_HEX_DIGITS + 2  # a leading 00 octet, as openssl prints
        or any(c not in string.hexdigits for c in digits)
    ):
        raise ValueError(
            f"{text!r} is not a certificate serial number (hex digits, colons allowed)"
        )
    number = int(digits, 16)
    if number == 0 or number.bit_length() > MAX_SERIAL_HEX_DIGITS * 4:
        raise ValueError(f"{text!r} is not a certificate serial number (1 to 20 octets)")
    return number


def canonical_serial(text: str) -> str:
    """A serial as people paste it, spelled as `format_serial` does; ValueError if not one."""
    return format_serial(parse_serial(text))


def certificate_email(cert: x509.Certificate) -> str | None:
    """The mailbox a certificate is for (first rfc822Name SAN, lower-cased), if any."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    addresses = san.get_values_for_type(x509.RFC822Name)
    return addresses[0].lower() if addresses else None
