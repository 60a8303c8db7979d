"""The bundled mini-CA: pure functions over `cryptography`, no SMTP."""

from pki.ca import (
    PrivateKey,
    create_ca,
    issue_server_cert,
    load_certificate,
    load_private_key,
    write_certificate,
    write_private_key,
)

__all__ = [
    "PrivateKey",
    "create_ca",
    "issue_server_cert",
    "load_certificate",
    "load_private_key",
    "write_certificate",
    "write_private_key",
]
