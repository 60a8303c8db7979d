"""The gateway's server-side TLS context."""

from __future__ import annotations

import ssl

from submitgw.config import TlsConfig

# TLS 1.2 suites: forward secrecy and AEAD only. The CBC suites OpenSSL also enables by
# default (ECDHE-*-AES*-SHA256/384) are MAC-then-encrypt and were the ground of Lucky13-style
# padding oracles; the DHE ones add nothing here. TLS 1.3 suites are all AEAD and set apart.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!PSK"


def server_context(cfg: TlsConfig, client_certificates: str = "off") -> ssl.SSLContext:
    """TLS 1.2+ (or 1.3+), AEAD suites only, no compression, no renegotiation.

    With client certificates on, the handshake checks the chain to the bundled CA
    and its validity; the session then checks the inventory (revocation, user).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if cfg.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    )
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.load_cert_chain(str(cfg.cert), str(cfg.key))
    if client_certificates == "off":
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cafile=str(cfg.ca_cert))
        ctx.verify_mode = (
            ssl.CERT_REQUIRED if client_certificates == "required" else ssl.CERT_OPTIONAL
        )
    return ctx


def describe(version: str | None, cipher: str | None) -> str | None:
    """`TLSv1.3 with cipher TLS_AES_256_GCM_SHA384`, for logs and the Received header."""
    if version is None:
        return None
    return f"{version} with cipher {cipher or 'unknown'}"
