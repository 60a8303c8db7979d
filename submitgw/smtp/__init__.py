"""The SMTP protocol: connections, TLS, the session that drives the steps, the relay."""
