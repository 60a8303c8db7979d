"""The bundled mini-CA: pure functions over `cryptography`, no SMTP."""

from pki.bundle import pkcs12_bundles
from pki.ca import (
    KEY_TYPES,
    MAX_DAYS,
    PrivateKey,
    certificate_email,
    create_ca,
    issue_client_cert,
    issue_server_cert,
    load_certificate,
    load_private_key,
    write_certificate,
    write_private_key,
    write_secret_file,
)
from pki.crl import REVOCATION_REASONS, build_crl, check_reason
from pki.identity import fingerprint_sha256, format_serial, parse_serial
from pki.names import server_name, server_names

__all__ = [
    "KEY_TYPES",
    "MAX_DAYS",
    "REVOCATION_REASONS",
    "PrivateKey",
    "build_crl",
    "certificate_email",
    "check_reason",
    "create_ca",
    "fingerprint_sha256",
    "format_serial",
    "issue_client_cert",
    "issue_server_cert",
    "load_certificate",
    "load_private_key",
    "parse_serial",
    "pkcs12_bundles",
    "server_name",
    "server_names",
    "write_certificate",
    "write_private_key",
    "write_secret_file",
]
