"""The test smarthosts must be trustworthy before any gateway test relies on what they saw."""

from __future__ import annotations

import datetime
import ipaddress
import smtplib
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.postfix import PostfixSmarthost
from tests.support.smarthost import CaptureSmarthost, behaviour_args, require_tool

SinkFactory = Callable[..., CaptureSmarthost]

RAW = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: Bob <bob@example.net>\r\n"
    b"Subject: capture check\r\n"
    b"Message-ID: <capture-check@example.org>\r\n"
    b"\r\n"
    b".a line that starts with a dot\r\n"
    b"..and one with two\r\n"
    b"trailing spaces   \r\n"
    b"\r\n"
    b"8bit: caf\xc3\xa9\r\n"
)


@pytest.fixture
def smarthost(smarthost_factory: Callable[..., CaptureSmarthost]) -> CaptureSmarthost:
    """These tests are about the sink itself: each gets one of its own."""
    return smarthost_factory()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for 127.0.0.1, trusted by the test client alone."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "capture-smarthost.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def connect(sink: CaptureSmarthost | PostfixSmarthost) -> smtplib.SMTP:
    client = smtplib.SMTP(sink.host, sink.port, local_hostname="client.test", timeout=10)
    client.ehlo()
    return client


def test_message_is_stored_byte_exact_with_its_envelope(smarthost: CaptureSmarthost) -> None:
    with connect(smarthost) as client:
        assert client.mail("alice@example.org", ["BODY=8BITMIME"])[0] == 250
        assert client.rcpt("bob@example.net")[0] == 250
        assert client.rcpt("carol@example.net")[0] == 250
        code, reply = client.data(RAW)
    assert code == 250

    (stored,) = smarthost.wait_for_messages(1)
    assert reply.decode() == f"2.0.0 Ok: queued as {stored.seq}"
    assert stored.raw == RAW
    assert stored.mail_from == "alice@example.org"
    assert stored.rcpt_tos == ["bob@example.net", "carol@example.net"]
    assert stored.envelope["mail_options"] == ["BODY=8BITMIME"]
    assert stored.envelope["helo"] == "client.test"
    assert stored.envelope["peer"][0] == "127.0.0.1"
    assert stored.envelope["size"] == len(RAW)
    assert stored.envelope["tls"] is False
    assert stored.envelope["auth_user"] is None
    received = datetime.datetime.fromisoformat(stored.envelope["received_at"])
    assert abs(datetime.datetime.now(datetime.UTC) - received) < datetime.timedelta(minutes=1)
    assert stored.message["Subject"] == "capture check"
    files = sorted(p.name for p in smarthost.dir.iterdir())
    assert files == [f"{stored.seq}.eml", f"{stored.seq}.json"], "no temporary file left behind"


def test_seq_is_unique_and_sorted_across_restarts(smarthost: CaptureSmarthost) -> None:
    for round_ in range(2):
        for n in range(3):
            with connect(smarthost) as client:
                client.sendmail("a@example.org", ["b@example.net"], f"Subject: {round_}-{n}\r\n")
        assert smarthost.stop() == 0, "SIGTERM must end the sink cleanly"
        smarthost.start()

    stored = smarthost.wait_for_messages(6)
    assert [m.message["Subject"] for m in stored] == [
        f"{r}-{n}" for r in range(2) for n in range(3)
    ]
    assert len({m.seq for m in stored}) == 6
    assert all(len(m.seq) == 20 and m.seq.isdigit() for m in stored)


def test_null_sender_and_size_option_are_recorded(smarthost: CaptureSmarthost) -> None:
    bounce = b"Subject: bounce\r\n\r\nx\r\n"
    with connect(smarthost) as client:
        client.sendmail("", ["postmaster@example.net"], bounce)
    (stored,) = smarthost.wait_for_messages(1)
    assert stored.mail_from == ""
    assert f"SIZE={len(bounce)}" in stored.envelope["mail_options"]


def test_reject_and_tempfail_rcpt_affect_only_matching_recipients(
    smarthost_factory: SinkFactory,
) -> None:
    sink = smarthost_factory(reject_rcpt=["nosuch"], tempfail_rcpt=["busy"])
    with connect(sink) as client:
        client.mail("alice@example.org")
        assert client.rcpt("nosuch@example.net") == (
            550,
            b"5.1.1 <nosuch@example.net>: Recipient address rejected",
        )
        code, reply = client.rcpt("busy@example.net")
        assert (code, reply[:5]) == (450, b"4.2.0")
        assert client.rcpt("bob@example.net")[0] == 250
        assert client.data(RAW)[0] == 250

    (stored,) = sink.wait_for_messages(1)
    assert stored.rcpt_tos == ["bob@example.net"]


def test_reject_data_stores_nothing(smarthost_factory: SinkFactory) -> None:
    sink = smarthost_factory(reject_data=True)
    with connect(sink) as client:
        client.mail("alice@example.org")
        client.rcpt("bob@example.net")
        assert client.data(RAW) == (554, b"5.6.0 Rejected by test")
    assert sink.messages() == []


def test_drop_after_data_closes_without_reply(smarthost_factory: SinkFactory) -> None:
    sink = smarthost_factory(drop_after_data=True)
    client = connect(sink)
    client.mail("alice@example.org")
    client.rcpt("bob@example.net")
    with pytest.raises(smtplib.SMTPServerDisconnected):
        client.data(RAW)
    client.close()
    assert sink.messages() == []


def test_data_delay_holds_back_the_final_reply(smarthost_factory: SinkFactory) -> None:
    sink = smarthost_factory(data_delay=1.0)
    with connect(sink) as client:
        client.mail("alice@example.org")
        client.rcpt("bob@example.net")
        started = time.monotonic()
        assert client.data(RAW)[0] == 250
        assert time.monotonic() - started >= 1.0
    assert len(sink.messages()) == 1


def test_smtputf8_is_advertised_only_when_asked(smarthost_factory: SinkFactory) -> None:
    plain = smarthost_factory()
    utf8 = smarthost_factory(smtputf8=True)
    with connect(plain) as client:
        assert not client.has_extn("smtputf8")
    with connect(utf8) as client:
        assert client.has_extn("smtputf8")
        client.sendmail("jörg@example.org", ["zoë@example.net"], RAW, mail_options=["SMTPUTF8"])
    (stored,) = utf8.wait_for_messages(1)
    assert stored.mail_from == "jörg@example.org"
    assert stored.rcpt_tos == ["zoë@example.net"]
    assert "SMTPUTF8" in stored.envelope["mail_options"]


def test_starttls_then_auth_is_required(
    smarthost_factory: SinkFactory, tls_files: tuple[Path, Path]
) -> None:
    cert, key = tls_files
    sink = smarthost_factory(tls_cert=cert, tls_key=key, auth=("relay", "s3cret"))
    trusting = ssl.create_default_context(cafile=str(cert))

    with connect(sink) as client:
        assert client.has_extn("starttls")
        assert not client.has_extn("auth"), "AUTH must not be offered in clear text"
        assert client.mail("alice@example.org")[0] == 530
        client.starttls(context=trusting)
        client.ehlo()
        assert set(client.esmtp_features["auth"].split()) == {"PLAIN", "LOGIN"}
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login("relay", "wrong")
        client.login("relay", "s3cret")
        client.sendmail("alice@example.org", ["bob@example.net"], RAW)

    with connect(sink) as client:
        client.starttls(context=trusting)
        client.ehlo()
        client.user, client.password = "relay", "s3cret"
        assert client.auth("LOGIN", client.auth_login, initial_response_ok=False)[0] == 235
        client.sendmail("alice@example.org", ["carol@example.net"], RAW)

    stored = sink.wait_for_messages(2)
    assert [m.envelope["tls"] for m in stored] == [True, True]
    assert [m.envelope["auth_user"] for m in stored] == ["relay", "relay"]
    assert [m.raw for m in stored] == [RAW, RAW]


def test_auth_without_tls_for_plaintext_smarthosts(smarthost_factory: SinkFactory) -> None:
    sink = smarthost_factory(auth="relay:s3cret")
    with connect(sink) as client:
        assert not client.has_extn("starttls")
        client.login("relay", "s3cret")
        client.sendmail("alice@example.org", ["bob@example.net"], RAW)
    (stored,) = sink.wait_for_messages(1)
    assert (stored.envelope["tls"], stored.envelope["auth_user"]) == (False, "relay")


def test_unknown_behaviour_is_refused() -> None:
    with pytest.raises(TypeError, match="rejct_rcpt"):
        behaviour_args({"rejct_rcpt": ["x"]})
    assert behaviour_args({"reject_rcpt": "a", "auth": ("u", "p"), "reject_data": False}) == [
        "--reject-rcpt",
        "a",
        "--auth",
        "u:p",
    ]


def test_require_tool_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Path(require_tool("sh")).name == "sh"
    missing = "submitgw-no-such-tool"
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match=r"scripts/test\.sh installs it"):
        require_tool(missing)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=f"{missing} is not installed"):
        require_tool(missing)


def test_postfix_relays_to_the_capture_sink(
    postfix_smarthost: PostfixSmarthost, smarthost: CaptureSmarthost
) -> None:
    with connect(postfix_smarthost) as client:
        assert postfix_smarthost.myhostname.encode() in client.ehlo_resp
        refused = client.sendmail("alice@example.org", ["bob@example.net"], RAW)
    assert refused == {}

    (stored,) = smarthost.wait_for_messages(1, timeout=20)
    assert stored.mail_from == "alice@example.org"
    assert stored.rcpt_tos == ["bob@example.net"]
    assert stored.envelope["helo"] == postfix_smarthost.myhostname
    header, _, body = stored.raw.partition(b"\r\n\r\n")
    assert body == RAW.partition(b"\r\n\r\n")[2]
    assert header.startswith(b"Received: from client.test")
    assert f"by {postfix_smarthost.myhostname} (Postfix)" in stored.message["Received"]
    assert stored.message["Message-ID"] == "<capture-check@example.org>"
    assert "status=sent" in postfix_smarthost.log_text()


def test_postfix_instance_stops_completely(smarthost: CaptureSmarthost) -> None:
    instance = PostfixSmarthost(smarthost).start()
    base, master = instance.base, instance.master_pid()
    assert base is not None and master is not None
    assert Path(f"/proc/{master}").exists()
    instance.stop()
    assert not Path(f"/proc/{master}").exists(), "the master must be gone, zombie included"
    assert not base.exists()
    with pytest.raises(OSError):
        smtplib.SMTP(instance.host, instance.port, timeout=2)
