"""pki.files: whole files or none, private material 0600 whatever the umask, no overwriting."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from pki import files


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that would leave new files world-readable and writable."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_secret_files_are_0600_even_under_an_open_umask(tmp_path: Path, open_umask: None) -> None:
    files.write_secret_file(tmp_path / "a.p12", b"secret")

    assert stat.S_IMODE((tmp_path / "a.p12").stat().st_mode) == 0o600
    assert (tmp_path / "a.p12").read_bytes() == b"secret"


def test_public_files_are_0644_even_under_a_narrow_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        files.write_new(tmp_path / "ca.crl", b"public", files.PUBLIC_MODE)
    finally:
        os.umask(old)

    assert stat.S_IMODE((tmp_path / "ca.crl").stat().st_mode) == 0o644


def test_a_new_file_never_replaces_one_and_leaves_no_temporary_behind(tmp_path: Path) -> None:
    path = tmp_path / "server.key"
    path.write_bytes(b"keep me")

    with pytest.raises(FileExistsError):
        files.write_secret_file(path, b"new")

    assert path.read_bytes() == b"keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["server.key"]


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        files.write_secret_file(tmp_path / "missing" / "a.key", b"secret")

    assert list(tmp_path.iterdir()) == []


def test_replace_swaps_the_whole_file_atomically(tmp_path: Path) -> None:
    path = tmp_path / "ca.crl"
    path.write_bytes(b"old")
    before = path.stat().st_ino

    files.replace(path, b"new")

    assert path.read_bytes() == b"new"
    assert path.stat().st_ino != before  # a new file renamed over it, never rewritten in place
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["ca.crl"]


def test_is_encrypted_pem_knows_both_forms() -> None:
    assert files.is_encrypted_pem(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nMII")
    assert files.is_encrypted_pem(
        b"-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES"
    )
    assert not files.is_encrypted_pem(b"-----BEGIN PRIVATE KEY-----\nMII")
