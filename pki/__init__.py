"""The bundled mini-CA: pure functions over `cryptography`, no SMTP."""
