"""scripts/peers.py: the reference servers the benchmark compares the gateway with must do
the work they stand for: Dovecot really verifies the gateway's argon2id hashes (a wrong
password fails), and smtp-sink keeps every message so that deliveries can be counted."""

from __future__ import annotations

import smtplib

import argon2

from scripts.peers import DovecotAuth, SmtpSink, tree_cpu_seconds
from submitgw.config import AuthConfig
from tests.support.smarthost import require_root, require_tool

USER = "alice@example.org"
PASSWORD = "correct horse battery staple"


def test_dovecot_verifies_argon2id_hashes_made_with_the_gateways_parameters() -> None:
    require_tool("dovecot")
    require_root("a private Dovecot instance")
    auth = AuthConfig()
    digest = argon2.PasswordHasher(
        time_cost=auth.argon2_time_cost,
        memory_cost=auth.argon2_memory_kib,
        parallelism=auth.argon2_parallelism,
        type=argon2.Type.ID,
    ).hash(PASSWORD)
    assert digest.startswith(f"$argon2id$v=19$m={auth.argon2_memory_kib},")
    dovecot = DovecotAuth({USER: "{ARGON2ID}" + digest}).start()
    try:
        assert dovecot.pid is not None
        before = tree_cpu_seconds(dovecot.pid)
        assert dovecot.authenticate(USER, PASSWORD)
        assert not dovecot.authenticate(USER, PASSWORD + "!")
        # The hash really ran (in auth workers, children of the master): tens of ms each.
        assert tree_cpu_seconds(dovecot.pid) - before >= 0.05
    finally:
        dovecot.stop()
    assert dovecot.base is None


def test_smtp_sink_keeps_each_message_until_taken() -> None:
    require_tool("smtp-sink")
    sink = SmtpSink().start()
    try:
        with smtplib.SMTP(sink.host, sink.port, timeout=10) as client:
            for n in (1, 2):
                message = f"Subject: {n}\r\nX-Bench: run {n}\r\n\r\nbody {n}\r\n"
                assert client.sendmail(USER, ["sink@example.net"], message) == {}
        taken = sink.take_messages()
        assert sorted(b"X-Bench: run 1\n" in m for m in taken) == [False, True]
        assert all(b"X-Rcpt-Args: <sink@example.net>" in m for m in taken)
        assert sink.take_messages() == []
    finally:
        sink.stop()
