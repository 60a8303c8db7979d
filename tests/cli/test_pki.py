"""`submitgw pki …` and `user --auth`, run as an admin runs them: real processes, real files.

Rules proven here: every issued certificate is in the inventory and its files
are complete, private where they hold keys, and never overwrite anything;
serials can be typed the way openssl prints them; an encrypted CA key is opened
only with a passphrase from a file or the environment; every error is one line.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

import pki
from submitgw import config as config_mod
from submitgw.store import CertificateRecord, CertificateStore, Database
from tests.cli.test_cli import CHEAP_AUTH, GOOD_PASSWORD, edit, ok, one_line_error, submitgw

PASSPHRASE = "ca passphrase with spaces"
SUFFIXES = (".crt", ".key", ".p12", ".legacy.p12")


@pytest.fixture(scope="session")
def pki_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One setup with users alice and bob, copied for each test."""
    folder = tmp_path_factory.mktemp("pki-template") / "gw"
    ok(submitgw("init", "--dir", str(folder), "--hostname", "gw.test"))
    edit(folder / "submitgw.toml", CHEAP_AUTH)
    for email in ("alice@example.org", "bob@example.org"):
        ok(add_user(folder / "submitgw.toml", email))
    return folder


@pytest.fixture
def setup(pki_template: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "gw"
    shutil.copytree(pki_template, folder)
    return folder


@pytest.fixture
def config(setup: Path) -> Path:
    return setup / "submitgw.toml"


@pytest.fixture
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def add_user(config: Path, email: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return submitgw(
        "--config",
        str(config),
        "user",
        "add",
        email,
        "--password-stdin",
        *flags,
        input=GOOD_PASSWORD + "\n",
    )


def run_pki(
    config: Path,
    *args: str,
    env: dict[str, str] | None = None,
    input: str | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    return submitgw("--config", str(config), "pki", *args, env=env, input=input, cwd=cwd)


def fields(output: str) -> dict[str, str]:
    """The `name: value` lines of a command's output."""
    result = {}
    for line in output.splitlines():
        name, sep, value = line.partition(": ")
        if sep and " " not in name:
            result[name] = value
    return result


def issue(config: Path, email: str, out: Path, *flags: str) -> dict[str, str]:
    """Issue, returning the printed fields plus the generated PKCS#12 password."""
    output = ok(run_pki(config, "issue", email, "--out", str(out), *flags))
    lines = output.splitlines()
    printed = fields(output)
    label = "PKCS#12 password (shown only now, stored nowhere):"
    if label in lines:
        printed["p12_password"] = lines[lines.index(label) + 1]
    return printed


def inventory(config: Path) -> list[CertificateRecord]:
    db = Database(config_mod.load(config).database.url)
    try:
        return CertificateStore(db).list()
    finally:
        db.dispose()


def list_json(config: Path, *flags: str) -> list[dict[str, object]]:
    return json.loads(ok(run_pki(config, "list", "--json", *flags)))


def colon_lower(serial: str) -> str:
    padded = serial if len(serial) % 2 == 0 else "0" + serial
    return ":".join(padded[i : i + 2] for i in range(0, len(padded), 2)).lower()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True)


# --- issue -----------------------------------------------------------------------------------


def test_issue_writes_four_files_records_and_prints_the_fields(
    config: Path, setup: Path, out: Path
) -> None:
    printed = issue(config, "Alice@Example.ORG", out)

    paths = {suffix: out / f"alice@example.org{suffix}" for suffix in SUFFIXES}
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths.values())
    assert mode(paths[".crt"]) == 0o644
    for suffix in (".key", ".p12", ".legacy.p12"):
        assert mode(paths[suffix]) == 0o600, suffix

    cert = pki.load_certificate(paths[".crt"])
    key = pki.load_private_key(paths[".key"])
    assert key.public_key() == cert.public_key()
    assert printed["serial"] == pki.format_serial(cert.serial_number)
    assert printed["fingerprint_sha256"] == pki.fingerprint_sha256(cert)
    assert printed["subject"] == "CN=alice@example.org"
    assert datetime.fromisoformat(printed["not_after"]) == cert.not_valid_after_utc.replace(
        microsecond=0
    )
    assert abs(cert.not_valid_after_utc - datetime.now(UTC) - timedelta(days=365)) < timedelta(
        minutes=1
    )

    password = printed["p12_password"]
    assert len(password) >= 20
    for suffix in (".p12", ".legacy.p12"):
        loaded = pkcs12.load_pkcs12(paths[suffix].read_bytes(), password.encode())
        assert loaded.cert is not None and loaded.cert.certificate == cert
        assert [c.certificate for c in loaded.additional_certs] == [
            pki.load_certificate(setup / "ca/ca.crt")
        ]

    (record,) = inventory(config)
    assert (record.serial, record.email) == (printed["serial"], "alice@example.org")
    chain = openssl(
        "verify", "-CAfile", str(setup / "ca/ca.crt"), "-purpose", "sslclient", str(paths[".crt"])
    )
    assert chain.returncode == 0, chain.stderr


def test_issue_defaults_to_the_current_folder_and_new_passwords(
    config: Path, tmp_path: Path
) -> None:
    here = tmp_path / "here"
    here.mkdir()

    first = ok(run_pki(config, "issue", "alice@example.org", cwd=here))
    second = issue(config, "bob@example.org", here)

    assert all((here / f"alice@example.org{s}").is_file() for s in SUFFIXES)
    assert all((here / f"bob@example.org{s}").is_file() for s in SUFFIXES)
    assert second["p12_password"] not in first
    assert len(inventory(config)) == 2


def test_issue_with_the_p12_password_from_stdin(config: Path, out: Path) -> None:
    output = ok(
        run_pki(
            config,
            "issue",
            "alice@example.org",
            "--out",
            str(out),
            "--p12-password-stdin",
            input="import me\nnot this\n",
        )
    )

    assert "PKCS#12 password" not in output
    assert "import me" not in output
    data = (out / "alice@example.org.p12").read_bytes()
    assert pkcs12.load_pkcs12(data, b"import me").key is not None
    with pytest.raises(ValueError):
        pkcs12.load_pkcs12(data, b"import me\n")


def set_auth(config: Path, email: str, policy: str) -> None:
    ok(submitgw("--config", str(config), "user", "set-auth", email, policy))


def test_issue_for_a_password_user_warns_that_the_certificate_is_ignored(
    config: Path, out: Path
) -> None:
    """Issued all the same, but the admin learns why it would not work and what to type."""
    set_auth(config, "alice@example.org", "password")

    result = run_pki(config, "issue", "alice@example.org", "--out", str(out))

    ok(result)
    assert result.stderr.splitlines() == [
        "warning: alice@example.org has auth policy 'password', which ignores certificates: "
        "this one will not log them in",
        "to let it (password or certificate): "
        "submitgw user set-auth alice@example.org password-or-certificate",
    ]
    assert "warning" not in result.stdout
    (record,) = inventory(config)
    assert record.email == "alice@example.org"
    assert (out / "alice@example.org.p12").is_file()


@pytest.mark.parametrize(
    "policy", ["certificate", "password-or-certificate", "password+certificate"]
)
def test_issue_for_a_user_whose_policy_uses_certificates_warns_nothing(
    config: Path, out: Path, policy: str
) -> None:
    set_auth(config, "alice@example.org", policy)

    result = run_pki(config, "issue", "alice@example.org", "--out", str(out))

    ok(result)
    assert result.stderr == ""


def test_renew_for_a_password_user_warns_too(config: Path, out: Path, tmp_path: Path) -> None:
    serial = issue(config, "alice@example.org", out)["serial"]
    set_auth(config, "alice@example.org", "password")
    again = tmp_path / "again"
    again.mkdir()

    result = run_pki(config, "renew", serial, "--out", str(again))

    ok(result)
    assert "set-auth alice@example.org password-or-certificate" in result.stderr


def test_issue_refuses_an_empty_p12_password(config: Path, out: Path) -> None:
    result = run_pki(
        config, "issue", "alice@example.org", "--out", str(out), "--p12-password-stdin", input="\n"
    )

    assert "PKCS#12 password is empty" in one_line_error(result)
    assert list(out.iterdir()) == []
    assert inventory(config) == []


def test_issue_rsa_key_and_days(config: Path, out: Path) -> None:
    issue(config, "alice@example.org", out, "--key-type", "rsa", "--days", "30")

    cert = pki.load_certificate(out / "alice@example.org.crt")
    assert isinstance(cert.public_key(), rsa.RSAPublicKey)
    assert abs(cert.not_valid_after_utc - datetime.now(UTC) - timedelta(days=30)) < timedelta(
        minutes=1
    )


def test_issue_refuses_to_overwrite_and_writes_nothing(config: Path, out: Path) -> None:
    precious = out / "alice@example.org.legacy.p12"
    precious.write_bytes(b"precious")

    line = one_line_error(run_pki(config, "issue", "alice@example.org", "--out", str(out)))

    assert str(precious) in line
    assert "refusing to overwrite" in line
    assert [p.name for p in out.iterdir()] == [precious.name]
    assert precious.read_bytes() == b"precious"
    assert inventory(config) == []


@pytest.fixture
def unwritable(tmp_path: Path) -> Iterator[Path]:
    """A folder this process cannot create files in (root ignores modes, but not sysfs)."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir(mode=0o555)
        yield folder
        folder.chmod(0o755)
        return
    folder = Path("/sys")
    with pytest.raises(PermissionError):
        (folder / "probe").write_bytes(b"")
    yield folder


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("under-a-file", "cannot create output folder"),
        ("file", "is not a folder"),
        ("unwritable", "cannot write"),
    ],
)
def test_issue_into_an_unusable_folder_is_one_line_and_records_nothing(
    config: Path, tmp_path: Path, request: pytest.FixtureRequest, where: str, message: str
) -> None:
    target = {
        "under-a-file": lambda: _a_file(tmp_path) / "sub",
        "file": lambda: _a_file(tmp_path),
        "unwritable": lambda: request.getfixturevalue("unwritable"),
    }[where]()

    line = one_line_error(run_pki(config, "issue", "alice@example.org", "--out", str(target)))

    assert message in line
    assert str(target) in line
    assert inventory(config) == []


def _a_file(tmp_path: Path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("x")
    return path


def test_issue_renew_and_server_cert_make_a_missing_folder_private(
    config: Path, tmp_path: Path
) -> None:
    issued = tmp_path / "new" / "alice"
    serial = issue(config, "alice@example.org", issued)["serial"]
    renewed = tmp_path / "renewed"
    ok(run_pki(config, "renew", serial, "--out", str(renewed)))
    server = tmp_path / "server"
    ok(run_pki(config, "server-cert", "gw.test", "--out", str(server)))

    for folder, names in (
        (issued, [f"alice@example.org{suffix}" for suffix in SUFFIXES]),
        (renewed, [f"alice@example.org{suffix}" for suffix in SUFFIXES]),
        (server, ["server.crt", "server.key"]),
    ):
        assert mode(folder) == 0o700, folder
        assert sorted(p.name for p in folder.iterdir()) == sorted(names)


def test_a_failed_issue_leaves_no_folder_behind(config: Path, tmp_path: Path) -> None:
    target = tmp_path / "never" / "made"

    line = one_line_error(run_pki(config, "issue", "nobody@example.org", "--out", str(target)))

    assert "no user nobody@example.org" in line
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["issue", "ghost@example.org"], "no user ghost@example.org"),
        (["issue", "not an address"], "not a valid email address"),
        (["show", "ABCDEF"], "no certificate with serial ABCDEF"),
        (["show", "xyz"], "is not a certificate serial number"),
        (["revoke", "ab:cd:ef"], "no certificate with serial ABCDEF"),
        (["renew", "ABCDEF"], "no certificate with serial ABCDEF"),
        (["revoke", "--user", "ghost@example.org"], "no user ghost@example.org"),
        (["list", "--user", "ghost@example.org"], "no user ghost@example.org"),
        (["revoke"], "give either SERIAL or --user EMAIL"),
        (["revoke", "ABCDEF", "--user", "alice@example.org"], "give either SERIAL or --user"),
    ],
)
def test_errors_are_one_line(config: Path, out: Path, args: list[str], expected: str) -> None:
    writes = ["--out", str(out)] if args[0] in {"issue", "renew"} else []

    assert expected in one_line_error(run_pki(config, *args, *writes))
    assert list(out.iterdir()) == []


# --- list and show ---------------------------------------------------------------------------


def test_list_json_and_text(config: Path, out: Path) -> None:
    alice = issue(config, "alice@example.org", out)
    bob = issue(config, "bob@example.org", out)

    rows = list_json(config)

    assert [row["serial"] for row in rows] == [alice["serial"], bob["serial"]]
    assert {"serial", "user", "fingerprint_sha256", "not_after", "revoked"} <= set(rows[0])
    assert rows[0]["user"] == "alice@example.org"
    assert rows[0]["fingerprint_sha256"] == alice["fingerprint_sha256"]
    assert rows[0]["revoked"] is False
    assert rows[0]["revocation_reason"] is None
    assert datetime.fromisoformat(str(rows[0]["not_after"])) == datetime.fromisoformat(
        alice["not_after"]
    )
    assert [row["user"] for row in list_json(config, "--user", "Bob@example.org")] == [
        "bob@example.org"
    ]
    text = ok(run_pki(config, "list")).splitlines()
    assert text[0].split("\t")[:3] == [alice["serial"], "alice@example.org", "valid"]


def test_list_of_nothing(config: Path) -> None:
    assert list_json(config) == []
    assert ok(run_pki(config, "list")) == ""


def test_show_takes_the_serial_as_openssl_prints_it(config: Path, out: Path) -> None:
    printed = issue(config, "alice@example.org", out)

    output = ok(run_pki(config, "show", colon_lower(printed["serial"])))

    shown = fields(output)
    assert shown["serial"] == printed["serial"]
    assert shown["user"] == "alice@example.org"
    assert shown["fingerprint_sha256"] == printed["fingerprint_sha256"]
    assert shown["revoked"] == "false"
    pem = output[output.index("-----BEGIN CERTIFICATE-----") :]
    assert pem == (out / "alice@example.org.crt").read_text()


# --- revoke ----------------------------------------------------------------------------------


def test_revoke_by_serial_in_lower_case_with_colons(config: Path, out: Path) -> None:
    printed = issue(config, "alice@example.org", out)

    output = ok(run_pki(config, "revoke", colon_lower(printed["serial"]), "--reason", "superseded"))

    assert f"revoked {printed['serial']} (alice@example.org, superseded)" in output
    (row,) = list_json(config)
    assert (row["revoked"], row["revocation_reason"]) == (True, "superseded")
    assert "revoked" in ok(run_pki(config, "list"))
    again = one_line_error(run_pki(config, "revoke", printed["serial"]))
    assert f"certificate {printed['serial']} was already revoked at" in again


def test_revoke_records_only_rfc_5280_reasons(config: Path, out: Path) -> None:
    """The inventory takes the reason as given: the command is what refuses others."""
    printed = issue(config, "alice@example.org", out)

    refused = run_pki(config, "revoke", printed["serial"], "--reason", "lost")

    assert refused.returncode == 2
    assert "Invalid value for '--reason'" in refused.stderr
    (row,) = list_json(config)
    assert row["revoked"] is False


def test_revoke_every_certificate_of_a_user(config: Path, out: Path, tmp_path: Path) -> None:
    first = issue(config, "alice@example.org", out)
    ok(run_pki(config, "renew", first["serial"], "--out", str(tmp_path)))
    bob = issue(config, "bob@example.org", out)

    output = ok(
        run_pki(config, "revoke", "--user", "alice@example.org", "--reason", "keyCompromise")
    )

    assert output.count("revoked ") == 2
    states = {(row["user"], row["revoked"], row["revocation_reason"]) for row in list_json(config)}
    assert states == {
        ("alice@example.org", True, "keyCompromise"),
        ("bob@example.org", False, None),
    }
    again = ok(run_pki(config, "revoke", "--user", "alice@example.org"))
    assert "alice@example.org has no unrevoked certificates" in again
    assert bob["serial"] not in output


# --- renew -----------------------------------------------------------------------------------


def test_renew_issues_a_new_key_like_the_old_and_keeps_the_old_valid(
    config: Path, out: Path, tmp_path: Path
) -> None:
    old = issue(config, "alice@example.org", out, "--days", "30", "--key-type", "rsa")
    renewed_dir = tmp_path / "renewed"
    renewed_dir.mkdir()

    output = ok(run_pki(config, "renew", colon_lower(old["serial"]), "--out", str(renewed_dir)))

    new = fields(output)
    assert new["serial"] != old["serial"]
    assert f"the old certificate {old['serial']} stays valid" in output
    old_cert = pki.load_certificate(out / "alice@example.org.crt")
    new_cert = pki.load_certificate(renewed_dir / "alice@example.org.crt")
    new_key = pki.load_private_key(renewed_dir / "alice@example.org.key")
    assert new_key.public_key() != pki.load_private_key(out / "alice@example.org.key").public_key()
    assert isinstance(new_key, rsa.RSAPrivateKey)
    assert pki.certificate_email(new_cert) == "alice@example.org"
    old_length = old_cert.not_valid_after_utc - old_cert.not_valid_before_utc
    new_length = new_cert.not_valid_after_utc - new_cert.not_valid_before_utc
    assert abs(new_length - old_length) < timedelta(minutes=1)
    assert [(r.serial, r.revoked) for r in inventory(config)] == [
        (old["serial"], False),
        (new["serial"], False),
    ]


def test_renew_ec_stays_ec(config: Path, out: Path, tmp_path: Path) -> None:
    old = issue(config, "bob@example.org", out)
    again = tmp_path / "again"
    again.mkdir()

    ok(run_pki(config, "renew", old["serial"], "--out", str(again)))

    assert isinstance(
        pki.load_private_key(again / "bob@example.org.key"), ec.EllipticCurvePrivateKey
    )


# --- CRL -------------------------------------------------------------------------------------


def test_crl_out_verifies_with_openssl_and_lists_the_revoked(
    config: Path, setup: Path, out: Path, tmp_path: Path
) -> None:
    gone = issue(config, "alice@example.org", out)
    kept = issue(config, "bob@example.org", out)
    ok(run_pki(config, "revoke", gone["serial"], "--reason", "keyCompromise"))
    crl_path = tmp_path / "ca.crl"

    assert "1 revoked" in ok(run_pki(config, "crl", "--out", str(crl_path)))

    ca_path = setup / "ca/ca.crt"
    checked = openssl("crl", "-in", str(crl_path), "-CAfile", str(ca_path), "-verify", "-noout")
    assert checked.returncode == 0, checked.stderr
    assert "verify OK" in checked.stdout + checked.stderr
    crl = x509.load_pem_x509_crl(crl_path.read_bytes())
    entry = crl.get_revoked_certificate_by_serial_number(int(gone["serial"], 16))
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.value == (
        "keyCompromise"
    )
    assert crl.get_revoked_certificate_by_serial_number(int(kept["serial"], 16)) is None
    assert mode(crl_path) == 0o644

    ok(run_pki(config, "crl", "--out", str(crl_path)))
    newer = x509.load_pem_x509_crl(crl_path.read_bytes())

    def number(c: x509.CertificateRevocationList) -> int:
        return c.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number

    assert number(newer) > number(crl), "a rebuilt CRL replaces the old one with a higher number"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ca.crl")] == []
    stdout_crl = x509.load_pem_x509_crl(ok(run_pki(config, "crl")).encode())
    assert len(stdout_crl) == 1


# --- server certificates ---------------------------------------------------------------------


def test_server_cert_writes_a_verifiable_pair_and_never_overwrites(
    config: Path, setup: Path, out: Path
) -> None:
    output = ok(run_pki(config, "server-cert", "mail.gw.test", "127.0.0.1", "--out", str(out)))

    crt, key = out / "server.crt", out / "server.key"
    assert (mode(crt), mode(key)) == (0o644, 0o600)
    cert = pki.load_certificate(crt)
    assert pki.load_private_key(key).public_key() == cert.public_key()
    assert fields(output)["serial"] == pki.format_serial(cert.serial_number)
    # A running gateway takes the new pair on a reload; no restart, no dropped session.
    assert "systemctl reload submitgw" in output and "restart" not in output
    checked = openssl(
        "verify",
        "-CAfile",
        str(setup / "ca/ca.crt"),
        "-purpose",
        "sslserver",
        "-verify_hostname",
        "mail.gw.test",
        str(crt),
    )
    assert checked.returncode == 0, checked.stderr
    before = crt.read_bytes()

    line = one_line_error(run_pki(config, "server-cert", "other.gw.test", "--out", str(out)))

    assert "refusing to overwrite" in line
    assert crt.read_bytes() == before
    assert inventory(config) == [], "server certificates are not client certificates"


# --- the CA passphrase -----------------------------------------------------------------------


@pytest.fixture
def encrypted(setup: Path, config: Path) -> Path:
    """The setup with its CA key re-encrypted under PASSPHRASE."""
    path = setup / "ca/ca.key"
    key = pki.load_private_key(path)
    path.unlink()
    pki.write_private_key(path, key, passphrase=PASSPHRASE.encode())
    return config


def test_encrypted_ca_key_opens_with_the_environment_variable(encrypted: Path, out: Path) -> None:
    env = {"SUBMITGW_CA_PASSPHRASE": PASSPHRASE}

    printed = issue_with(encrypted, out, env=env)

    assert printed["serial"] == inventory(encrypted)[0].serial


def test_encrypted_ca_key_opens_with_a_passphrase_file(
    encrypted: Path, out: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "passphrase"
    secret.write_text(PASSPHRASE + "\nignored\n")

    ok(
        submitgw(
            "--config",
            str(encrypted),
            "pki",
            "--ca-passphrase-file",
            str(secret),
            "issue",
            "alice@example.org",
            "--out",
            str(out),
            env={"SUBMITGW_CA_PASSPHRASE": "the file wins"},
        )
    )

    assert len(inventory(encrypted)) == 1


def issue_with(config: Path, out: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    return fields(ok(run_pki(config, "issue", "alice@example.org", "--out", str(out), env=env)))


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "is encrypted: set SUBMITGW_CA_PASSPHRASE"),
        ({"SUBMITGW_CA_PASSPHRASE": "wrong"}, "wrong CA passphrase for"),
        ({"SUBMITGW_CA_PASSPHRASE": PASSPHRASE.upper()}, "wrong CA passphrase for"),
    ],
)
def test_encrypted_ca_key_without_the_right_passphrase(
    encrypted: Path, out: Path, env: dict[str, str], expected: str
) -> None:
    for command in (["issue", "alice@example.org", "--out", str(out)], ["crl"]):
        line = one_line_error(run_pki(encrypted, *command, env=env))
        assert expected in line
    assert list(out.iterdir()) == []
    assert inventory(encrypted) == []
    # Reading the inventory never needs the CA key.
    assert list_json(encrypted) == []


def test_wrong_passphrase_file_and_unreadable_file(
    encrypted: Path, out: Path, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("nope\n")
    base = ["--config", str(encrypted), "pki", "--ca-passphrase-file"]
    issue_args = ["issue", "alice@example.org", "--out", str(out)]

    assert "wrong CA passphrase" in one_line_error(submitgw(*base, str(wrong), *issue_args))
    missing = one_line_error(submitgw(*base, str(tmp_path / "missing"), *issue_args))
    assert "cannot read CA passphrase file" in missing
    (tmp_path / "empty").write_text("")
    assert "is empty" in one_line_error(submitgw(*base, str(tmp_path / "empty"), *issue_args))


def test_the_passphrase_is_never_a_flag_value(encrypted: Path, out: Path) -> None:
    result = submitgw("--config", str(encrypted), "pki", "--ca-passphrase", PASSPHRASE, "list")

    line = one_line_error(result)
    assert "never taken as a flag value" in line
    assert PASSPHRASE not in line


def test_a_passphrase_for_an_unencrypted_key_is_an_error(config: Path, out: Path) -> None:
    result = run_pki(
        config, "issue", "alice@example.org", "--out", str(out), env={"SUBMITGW_CA_PASSPHRASE": "x"}
    )

    assert "is not encrypted" in one_line_error(result)


# --- init --ca-domain ------------------------------------------------------------------------


def test_init_ca_domain_constrains_the_ca(tmp_path: Path) -> None:
    folder = tmp_path / "gw"
    ok(
        submitgw(
            "init", "--dir", str(folder), "--hostname", "gw.test", "--ca-domain", "example.org"
        )
    )
    config = folder / "submitgw.toml"
    edit(config, CHEAP_AUTH)
    ok(add_user(config, "in@mail.example.org"))
    ok(add_user(config, "out@example.net"))
    out = tmp_path / "out"
    out.mkdir()

    constraints = pki.load_certificate(folder / "ca/ca.crt").extensions.get_extension_for_class(
        x509.NameConstraints
    )
    assert [n for n in constraints.value.permitted_subtrees if isinstance(n, x509.RFC822Name)] == [
        x509.RFC822Name("example.org"),
        x509.RFC822Name(".example.org"),
    ]
    ok(run_pki(config, "issue", "in@mail.example.org", "--out", str(out)))
    line = one_line_error(run_pki(config, "issue", "out@example.net", "--out", str(out)))
    assert "may not certify out@example.net" in line
    assert [r.email for r in inventory(config)] == ["in@mail.example.org"]


def test_init_refuses_a_bad_ca_domain_before_creating_anything(tmp_path: Path) -> None:
    folder = tmp_path / "gw"

    line = one_line_error(
        submitgw("init", "--dir", str(folder), "--hostname", "gw.test", "--ca-domain", "a@b")
    )

    assert "not a mail domain" in line
    assert not folder.exists()
