"""The bundled mini-CA over `cryptography`: knows nothing of SMTP or the database.

`CA` issues `IssuedCertificate`s and signs CRLs; `pki.files` reads and writes
keys and certificates; `pki.identity` spells certificates as text.
"""

from pki.ca import (
    CA,
    MAX_DAYS,
    CAError,
    CAPassphraseRequired,
    IssuedCertificate,
)
from pki.crl import REVOCATION_REASONS, check_reason
from pki.files import (
    load_certificate,
    load_private_key,
    write_certificate,
    write_private_key,
    write_secret_file,
)
from pki.identity import (
    canonical_serial,
    certificate_email,
    fingerprint_sha256,
    format_serial,
    parse_serial,
)
from pki.keys import KeyType, PrivateKey
from pki.names import server_name, server_names

__all__ = [
    "CA",
    "MAX_DAYS",
    "REVOCATION_REASONS",
    "CAError",
    "CAPassphraseRequired",
    "IssuedCertificate",
    "KeyType",
    "PrivateKey",
    "canonical_serial",
    "certificate_email",
    "check_reason",
    "fingerprint_sha256",
    "format_serial",
    "load_certificate",
    "load_private_key",
    "parse_serial",
    "server_name",
    "server_names",
    "write_certificate",
    "write_private_key",
    "write_secret_file",
]
