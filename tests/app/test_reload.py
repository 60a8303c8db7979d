"""What a reload reads and decides, before anything is applied: every unusable file is
named, changed files are told by their content, and restart-only settings stay as they were.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

import pki
from submitgw import config as config_mod
from submitgw.app.reload import RESTART_KEYS, prepare, read_tls_files
from submitgw.config import Config, ConfigError, Endpoint, certificates_needed


@pytest.fixture
def setup(gateway_template: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "setup"
    shutil.copytree(gateway_template, copy)
    return copy


@pytest.fixture
def cfg(setup: Path) -> Config:
    cfg = config_mod.load(setup / "submitgw.toml")
    return cfg.replace(
        submission=dataclasses.replace(cfg.submission, listen=Endpoint("127.0.0.1", 0)),
        submissions=dataclasses.replace(cfg.submissions, listen=Endpoint("127.0.0.1", 0)),
    )


def refusal(cfg: Config) -> str:
    with pytest.raises(ConfigError) as caught:
        read_tls_files(cfg.tls, need_ca=certificates_needed(cfg))
    return str(caught.value)


def test_each_unusable_tls_file_is_named(cfg: Config, setup: Path) -> None:
    tls = cfg.tls
    missing = dataclasses.replace(tls, cert=setup / "tls" / "gone.crt")
    assert refusal(cfg.replace(tls=missing)).startswith(f"cannot read [tls] cert {missing.cert}:")

    (setup / "tls" / "junk.crt").write_text("not a certificate\n")
    junk = dataclasses.replace(tls, cert=setup / "tls" / "junk.crt")
    assert "holds no PEM certificate" in refusal(cfg.replace(tls=junk))

    key = pki.load_private_key(tls.key)
    locked = setup / "tls" / "locked.key"
    locked.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    encrypted = dataclasses.replace(tls, key=locked)
    assert "is encrypted" in refusal(cfg.replace(tls=encrypted))

    no_ca = dataclasses.replace(tls, ca_cert=setup / "ca" / "gone.crt")
    assert refusal(cfg.replace(tls=no_ca)).startswith("cannot read [tls] ca_cert")
    # No listener asks for client certificates: the CA is not needed, so not read.
    off = cfg.replace(
        tls=no_ca,
        submission=dataclasses.replace(cfg.submission, client_certificates="off"),
        submissions=dataclasses.replace(cfg.submissions, client_certificates="off"),
    )
    assert read_tls_files(off.tls, need_ca=certificates_needed(off)).ca is None


def test_a_file_changed_under_the_same_name_is_reported(cfg: Config, setup: Path) -> None:
    files = read_tls_files(cfg.tls, need_ca=True)
    ca = pki.CA.load(setup / "ca" / "ca.crt", setup / "ca" / "ca.key")
    issued = ca.issue_server_cert(["localhost"])
    (setup / "tls" / "server.crt").write_bytes(issued.cert_pem())
    (setup / "tls" / "server.key").write_bytes(issued.private_key_pem())

    ready = prepare(lambda: cfg, cfg, files)

    assert ready.changed == ["tls.cert", "tls.key"]
    assert ready.files.cert.serial_number == issued.cert.serial_number
    assert set(ready.contexts) == {"submission", "submissions"}
    assert ready.site_context is None  # the site is off
    assert ready.hashing is None and ready.resolver is None  # nothing of theirs changed


def test_restart_only_settings_keep_their_values(cfg: Config) -> None:
    files = read_tls_files(cfg.tls, need_ca=True)
    wanted = cfg.replace(
        submission=dataclasses.replace(cfg.submission, listen=Endpoint("127.0.0.1", 2587)),
        database=config_mod.DatabaseConfig("sqlite:////elsewhere.db"),
        auth=dataclasses.replace(cfg.auth, workers=7, argon2_time_cost=2, max_pending=3),
        dns=dataclasses.replace(cfg.dns, timeout=1.0),
    )

    ready = prepare(lambda: wanted, cfg, files)

    assert ready.needs_restart == ["submission.listen", "database.url", "auth.workers"]
    assert set(ready.needs_restart) <= set(RESTART_KEYS)
    assert ready.cfg.submission.listen == cfg.submission.listen
    assert ready.cfg.database == cfg.database
    assert ready.cfg.auth.workers == cfg.auth.workers
    assert ready.changed == ["auth.max_pending", "auth.argon2_time_cost", "dns.timeout"]
    # Made off the event loop, ready to swap in: the hasher and the resolver.
    assert ready.hashing is not None and ready.hashing.hasher.time_cost == 2
    assert ready.resolver is not None and ready.resolver.timeout == 1.0
