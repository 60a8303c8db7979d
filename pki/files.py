"""Keys, certificates and CRLs on disk: the only code in `pki` that touches files.

Every file appears complete or not at all (written under a temporary name, then
linked or renamed into place), private material is mode 0600 from its first
byte, and only a CRL ever replaces an existing file.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pki.keys import PrivateKey, can_sign_certificates

FilePath: TypeAlias = str | os.PathLike[str]
SECRET_MODE = 0o600
PUBLIC_MODE = 0o644
# File systems without hard links; there the file is created in place with O_EXCL.
_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK}


def _temporary(path: Path, data: bytes, mode: int) -> Path:
    """`data` in a new file next to `path`, flushed to disk, with `mode` whatever the umask."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)


def _create_in_place(path: Path, data: bytes, mode: int) -> None:
    """O_EXCL creates with `mode` from the start and refuses a symlink planted at `path`."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)
            file.write(data)
    except BaseException:
        os.unlink(path)
        raise


def write_new(path: FilePath, data: bytes, mode: int) -> None:
    """Create `path` holding `data`; FileExistsError if anything (even a symlink) is there.

    A hard link of a finished temporary file never replaces an existing name, so
    readers (and a crash) see the whole file or none.
    """
    target = Path(path)
    temp = _temporary(target, data, mode)
    try:
        os.link(temp, target)
    except OSError as exc:
        if exc.errno not in _NO_LINKS:
            raise
        _create_in_place(target, data, mode)
    finally:
        temp.unlink(missing_ok=True)


def replace(path: FilePath, data: bytes, mode: int = PUBLIC_MODE) -> None:
    """Write `path` atomically, replacing what was there (for files rebuilt on a schedule)."""
    target = Path(path)
    temp = _temporary(target, data, mode)
    try:
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def private_key_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    """PKCS#8 PEM; encrypted when a passphrase is given (an empty one is refused)."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.NoEncryption()
        if passphrase is None
        else serialization.BestAvailableEncryption(passphrase)
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def write_private_key(path: FilePath, key: PrivateKey, passphrase: bytes | None = None) -> None:
    """PKCS#8 PEM, mode 0600, never replacing a file."""
    write_new(path, private_key_pem(key, passphrase), SECRET_MODE)


def write_secret_file(path: FilePath, data: bytes) -> None:
    """Key material in another encoding (PKCS#12), or a config: mode 0600, never replacing."""
    write_new(path, data, SECRET_MODE)


def write_certificate(path: FilePath, cert: x509.Certificate) -> None:
    write_new(path, cert.public_bytes(serialization.Encoding.PEM), PUBLIC_MODE)


def load_certificate(path: FilePath) -> x509.Certificate:
    """OSError if unreadable, ValueError if not a PEM certificate."""
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def is_encrypted_pem(data: bytes) -> bool:
    """Whether a PEM private key needs a passphrase (PKCS#8 or traditional OpenSSL form)."""
    return b"ENCRYPTED" in data.split(b"\n", 2)[0] or b"Proc-Type: 4,ENCRYPTED" in data


def parse_private_key(
    data: bytes, passphrase: bytes | None = None, *, name: str = "key"
) -> PrivateKey:
    """Raises TypeError if the key cannot sign certificates, ValueError on a wrong passphrase."""
    key = serialization.load_pem_private_key(data, password=passphrase)
    if not can_sign_certificates(key):
        raise TypeError(f"{name}: a {type(key).__name__} cannot sign certificates")
    return key


def load_private_key(path: FilePath, passphrase: bytes | None = None) -> PrivateKey:
    """Raises TypeError if the key cannot sign certificates, ValueError on a wrong passphrase."""
    return parse_private_key(Path(path).read_bytes(), passphrase, name=str(path))
