"""Server names and the CA's name constraints, checked by real TLS clients and openssl.

Rules proven here: a server certificate is issued only for DNS names and IP
addresses (`pki server-cert 'bad name!'` is a one-line error); the CA that
`init` makes can vouch for the gateway's own names only, so a certificate for
any other site signed with its key (a stolen key, our own check bypassed) fails
verification in Python's ssl and in openssl, while the gateway's names verify;
with `--ca-domain` client certificates verify for those mail domains only.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import pki
from pki.names import server_name, server_subtrees
from submitgw.cli import commands
from submitgw.config import TlsConfig
from submitgw.tls import server_context

# --- the names themselves ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "entry"),
    [
        ("gw.test", x509.DNSName("gw.test")),
        ("Mail.Example.ORG.", x509.DNSName("mail.example.org")),
        ("localhost", x509.DNSName("localhost")),
        ("*.example.org", x509.DNSName("*.example.org")),
        ("xn--bcher-kva.example", x509.DNSName("xn--bcher-kva.example")),
        ("a-b.1x.example", x509.DNSName("a-b.1x.example")),
        ("192.0.2.7", x509.IPAddress(ipaddress.ip_address("192.0.2.7"))),
        ("2001:db8::25", x509.IPAddress(ipaddress.ip_address("2001:db8::25"))),
    ],
)
def test_server_names_accepted(text: str, entry: x509.GeneralName) -> None:
    assert server_name(text) == entry


@pytest.mark.parametrize(
    "text",
    [
        "bad name!",
        "",
        ".",
        "a..b",
        ".example.org",
        "under_score.example",
        "-lead.example",
        "trail-.example",
        "a" * 64 + ".example",
        ("a" * 60 + ".") * 5 + "example",
        "*",
        "*.org",
        "f*.example.org",
        "www.*.example.org",
        "*.*.example.org",
        "bücher.example",
        "ab--cd.example",
        "xn--.example",
        "127.1",
        "1.2.3.4444",
        "0x7f.1",
        "01.2.3.4",
        "[::1]",
        "fe80::1%eth0",
        "gw.test\nforged.example",
        "gw.test/x",
    ],
)
def test_server_names_refused(text: str) -> None:
    with pytest.raises(ValueError) as info:
        server_name(text)
    assert "\n" not in str(info.value)


LONG_NAME = ("a" * 40 + ".") * 2 + "gw.test"


@pytest.mark.parametrize("names", [["127.0.0.1"], [LONG_NAME]], ids=["ip-only", "long-name"])
def test_server_certificate_without_a_cn_sized_name_has_a_critical_san(
    tmp_path: Path, names: list[str]
) -> None:
    """A CN of digits would be read as a DNS name under name constraints; CNs hold 64."""
    ca = pki.CA.create("names CA", server_names=["gw.test", "127.0.0.1"])
    ca_cert = ca.cert

    cert = ca.issue_server_cert(names).cert

    assert cert.subject == x509.Name([])
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical
    pki.write_certificate(tmp_path / "ca.crt", ca_cert)
    pki.write_certificate(tmp_path / "server.crt", cert)
    check = "-verify_ip" if names == ["127.0.0.1"] else "-verify_hostname"
    verified = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(tmp_path / "ca.crt"),
            "-purpose",
            "sslserver",
            check,
            names[0],
            str(tmp_path / "server.crt"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    with_cn = ca.issue_server_cert([*names, "gw.test"]).cert
    assert with_cn.subject.rfc4514_string() == "CN=gw.test"


def test_server_subtrees_exclude_name_forms_not_permitted() -> None:
    permitted, excluded = server_subtrees(["*.gw.test", "gw.test", "192.0.2.7"])

    assert permitted == [
        x509.DNSName("gw.test"),
        x509.IPAddress(ipaddress.ip_network("192.0.2.7/32")),
    ]
    assert excluded == [x509.IPAddress(ipaddress.ip_network("::/0"))]
    assert server_subtrees(["::1"])[1] == [
        x509.DNSName(""),
        x509.IPAddress(ipaddress.ip_network("0.0.0.0/0")),
    ]


# --- a setup made by init ---------------------------------------------------------------

OWN_NAMES = ["gw.test", "smtp.gw-alias.test", "192.0.2.7", "localhost", "127.0.0.1"]


def run(*args: str) -> Result:
    return CliRunner().invoke(commands(), list(args))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("names") / "gw"
    result = run(
        "init",
        "--dir",
        str(folder),
        "--hostname",
        "gw.test",
        "--server-name",
        "smtp.gw-alias.test",
        "--server-name",
        "192.0.2.7",
        "--ca-domain",
        "example.org",
    )
    assert result.exit_code == 0, result.output
    assert f"server names only: {', '.join(OWN_NAMES)}" in result.output
    return folder


@pytest.fixture(scope="module")
def ca(setup: Path) -> pki.CA:
    return pki.CA.load(setup / "ca/ca.crt", setup / "ca/ca.key")


def test_init_constrains_the_ca_to_its_own_names_and_mail_domains(ca: pki.CA, setup: Path) -> None:
    ext = ca.cert.extensions.get_extension_for_class(x509.NameConstraints)

    assert ext.critical is True
    assert ext.value.permitted_subtrees == [
        x509.DNSName("gw.test"),
        x509.DNSName("smtp.gw-alias.test"),
        x509.IPAddress(ipaddress.ip_network("192.0.2.7/32")),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_network("127.0.0.1/32")),
        x509.RFC822Name("example.org"),
        x509.RFC822Name(".example.org"),
    ]
    assert ext.value.excluded_subtrees == [x509.IPAddress(ipaddress.ip_network("::/0"))]
    server = pki.load_certificate(setup / "tls/server.crt")
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(n.value) for n in san] == OWN_NAMES


def forge(
    ca: pki.CA,
    names: list[x509.GeneralName],
    cn: str,
    usage: x509.ObjectIdentifier = ExtendedKeyUsageOID.SERVER_AUTH,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """What someone holding the CA key could sign, past every check `pki` makes."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca.key, hashes.SHA256()), key


def write_pair(folder: Path, name: str, cert: x509.Certificate, key: object) -> TlsConfig:
    folder.mkdir(exist_ok=True)
    pki.write_certificate(folder / f"{name}.crt", cert)
    pki.write_private_key(folder / f"{name}.key", key)  # type: ignore[arg-type]
    return TlsConfig(cert=folder / f"{name}.crt", key=folder / f"{name}.key")


def tls_handshake(server: ssl.SSLContext, client: ssl.SSLContext, server_hostname: str) -> bytes:
    """A real handshake over loopback; the server sends b"ok" once it accepted the client."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError):
            conn.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with (
            socket.create_connection(listener.getsockname(), timeout=10) as sock,
            client.wrap_socket(sock, server_hostname=server_hostname) as tls,
        ):
            return tls.recv(2)
    finally:
        thread.join(10)
        listener.close()


def client_context(setup: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(setup / "ca/ca.crt"))


OUTSIDE = [
    ("www.example.com", [x509.DNSName("www.example.com")]),
    ("gw.test.attacker.example", [x509.DNSName("gw.test.attacker.example")]),
    ("*.example.com", [x509.DNSName("*.example.com")]),
    ("192.0.2.99", [x509.IPAddress(ipaddress.ip_address("192.0.2.99"))]),
    ("2001:db8::1", [x509.IPAddress(ipaddress.ip_address("2001:db8::1"))]),
    ("www.example.com", []),  # no SAN: the CN is read as the DNS name
]


@pytest.mark.parametrize(
    ("hostname", "names"), OUTSIDE, ids=[f"{h}{'' if n else '-cn-only'}" for h, n in OUTSIDE]
)
def test_python_ssl_rejects_a_forged_certificate_for_another_site(
    setup: Path,
    ca: pki.CA,
    tmp_path: Path,
    hostname: str,
    names: list[x509.GeneralName],
) -> None:
    cert, key = forge(ca, names, hostname.replace("*", "www"))
    forged = server_context(write_pair(tmp_path, "forged", cert, key))
    client = client_context(setup)
    client.hostname_checks_common_name = not names

    with pytest.raises(ssl.SSLCertVerificationError, match="permitted subtree violation"):
        tls_handshake(forged, client, hostname.replace("*", "www"))

    result = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(setup / "ca/ca.crt"),
            "-purpose",
            "sslserver",
            str(tmp_path / "forged.crt"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "permitted subtree violation" in result.stdout + result.stderr


@pytest.mark.parametrize("hostname", ["gw.test", "smtp.gw-alias.test", "192.0.2.7", "127.0.0.1"])
def test_python_ssl_accepts_the_gateways_own_certificate(setup: Path, hostname: str) -> None:
    own = server_context(TlsConfig(cert=setup / "tls/server.crt", key=setup / "tls/server.key"))

    assert tls_handshake(own, client_context(setup), hostname) == b"ok"


def test_server_cert_issues_inside_the_constraints_and_it_verifies(
    setup: Path, tmp_path: Path
) -> None:
    """A later name below one of the CA's (mail.gw.test) needs no new CA."""
    config = setup / "submitgw.toml"
    result = run(
        "--config",
        str(config),
        "pki",
        "server-cert",
        "mail.gw.test",
        "*.gw.test",
        "--out",
        str(tmp_path),
    )
    assert result.exit_code == 0, result.output
    issued = server_context(TlsConfig(cert=tmp_path / "server.crt", key=tmp_path / "server.key"))

    assert tls_handshake(issued, client_context(setup), "mail.gw.test") == b"ok"
    assert tls_handshake(issued, client_context(setup), "webmail.gw.test") == b"ok"


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("bad name!", "is not a DNS name"),
        ("www.example.com", "the CA may not certify server name www.example.com"),
        ("10.1.2.3", "the CA may not certify server name 10.1.2.3"),
        ("gw.test\nforged", "is not a DNS name"),
    ],
)
def test_server_cert_refuses_bad_and_outside_names_in_one_line(
    setup: Path, tmp_path: Path, name: str, needle: str
) -> None:
    result = run(
        "--config",
        str(setup / "submitgw.toml"),
        "pki",
        "server-cert",
        "gw.test",
        name,
        "--out",
        str(tmp_path),
    )

    assert isinstance(result.exception, SystemExit)
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("Error: ") and needle in line
    assert list(tmp_path.iterdir()) == []


def test_init_refuses_a_bad_server_name_before_creating_anything(tmp_path: Path) -> None:
    folder = tmp_path / "gw"

    result = run("init", "--dir", str(folder), "--hostname", "gw.test", "--server-name", "a b")

    assert result.exit_code == 1
    assert "'a b' is not a DNS name" in result.stderr
    assert not folder.exists()


# --- client certificates under the same CA ----------------------------------------------


def test_client_certificates_verify_for_the_permitted_mail_domains_only(
    setup: Path, ca: pki.CA, tmp_path: Path
) -> None:
    gateway = server_context(
        TlsConfig(
            cert=setup / "tls/server.crt", key=setup / "tls/server.key", ca_cert=setup / "ca/ca.crt"
        ),
        "required",
    )
    for email in ("alice@example.org", "bob@lists.example.org"):
        issued = ca.issue_client_cert(email)
        pair = write_pair(tmp_path, email, issued.cert, issued.key)
        client = client_context(setup)
        client.load_cert_chain(pair.cert, pair.key)
        assert tls_handshake(gateway, client, "gw.test") == b"ok", email

    # The same forging, inside the permitted domain, passes: what fails below is the domain.
    cert, key = forge(
        ca,
        [x509.RFC822Name("carol@example.org")],
        "carol@example.org",
        ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    pair = write_pair(tmp_path, "carol", cert, key)
    client = client_context(setup)
    client.load_cert_chain(pair.cert, pair.key)
    assert tls_handshake(gateway, client, "gw.test") == b"ok"

    cert, key = forge(
        ca,
        [x509.RFC822Name("mallory@example.net")],
        "mallory@example.net",
        ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    pair = write_pair(tmp_path, "mallory", cert, key)
    client = client_context(setup)
    client.load_cert_chain(pair.cert, pair.key)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        tls_handshake(gateway, client, "gw.test")
