"""`submitgw pki …`: client certificates from the bundled CA, and their inventory.

Every certificate issued here is recorded in the database before anyone can
use it, because the gateway accepts only certificates it finds there. Private
keys and PKCS#12 passwords are written or shown once and never stored.
"""

from __future__ import annotations

import json
import re
import secrets
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import pki
from pki.files import replace as replace_file
from submitgw.cli.context import CA_PASSPHRASE_ENV, Context, email_argument, pass_context
from submitgw.cli.services import admin_actor
from submitgw.store import (
    CertificateRecord,
)
from submitgw.types import PASSWORD, PASSWORD_OR_CERTIFICATE

# Characters kept as they are in file names; anything else (e.g. "/", legal in
# an address's local part) becomes "_" so a name can never leave --out.
_UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9@._+-]")
P12_PASSWORD_BYTES = 18  # 24 characters of base64url, 144 bits


def _serial(text: str) -> str:
    try:
        return pki.canonical_serial(text)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc


def _refuse_command_line(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """The passphrase option exists only to read the environment variable."""
    if ctx.get_parameter_source(param.name or "") == ParameterSource.COMMANDLINE:
        raise click.ClickException(
            f"the CA passphrase is never taken as a flag value (other users could read it "
            f"from the process list): set {CA_PASSPHRASE_ENV} or use --ca-passphrase-file"
        )
    return value


@click.group("pki")
@click.option(
    "--ca-passphrase-file",
    type=click.Path(path_type=Path),
    metavar="PATH",
    help=f"File whose first line decrypts the CA key (beats ${CA_PASSPHRASE_ENV}).",
)
@click.option(
    "--ca-passphrase",
    "ca_passphrase_env",
    envvar=CA_PASSPHRASE_ENV,
    hidden=True,
    callback=_refuse_command_line,
)
@pass_context
def pki_group(ctx: Context, ca_passphrase_file: Path | None, ca_passphrase_env: str | None) -> None:
    """Client certificates: issue, list, revoke, renew, CRL; server certificates.

    An encrypted CA key is decrypted with the first line of --ca-passphrase-file,
    or with $SUBMITGW_CA_PASSPHRASE; never with a flag value.
    """
    ctx.set_ca_passphrase(ca_passphrase_file, ca_passphrase_env)


# --- output files ----------------------------------------------------------------------------


def _out_dir(path: Path) -> Path:
    """Checked before any work; a missing folder is made only when there is something to write."""
    if (path.exists() or path.is_symlink()) and not path.is_dir():
        raise click.ClickException(f"output folder {path} is not a folder")
    return path


def _make_out_dir(path: Path) -> list[Path]:
    """Make a missing --out (mode 0700: it receives private keys), and its parents.

    Returns the folders made, innermost first, so that a failed write removes them again.
    """
    missing = [p for p in (path, *path.parents) if not p.exists()]
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if missing:
            path.chmod(0o700)
    except OSError as exc:
        _remove_dirs(missing)
        raise click.ClickException(
            f"cannot create output folder {path}: {exc.strerror or exc}"
        ) from exc
    return missing


def _remove_dirs(folders: list[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _refuse_existing(paths: list[Path]) -> None:
    for path in paths:
        if path.exists() or path.is_symlink():
            raise click.ClickException(f"{path} already exists; refusing to overwrite it")


def _write_all(folder: Path, writes: list[tuple[Path, Callable[[Path], None]]]) -> list[Path]:
    """Write every file or none: a half-written set would be confusing to hand out.

    Returns the folders it had to make (see `_make_out_dir`).
    """
    made = _make_out_dir(folder)
    done: list[Path] = []
    for path, write in writes:
        try:
            write(path)
        except OSError as exc:
            _remove(done)
            _remove_dirs(made)
            if isinstance(exc, FileExistsError):
                message = f"{path} already exists; refusing to overwrite it"
            else:
                message = f"cannot write {path}: {exc.strerror}"
            raise click.ClickException(message) from exc
        done.append(path)
    return made


def _remove(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


# --- issuing ---------------------------------------------------------------------------------


def _p12_password(from_stdin: bool) -> tuple[str, bool]:
    """(password, generated): from stdin's first line, or random when not given."""
    if not from_stdin:
        return secrets.token_urlsafe(P12_PASSWORD_BYTES), True
    line = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    if not line:
        raise click.ClickException("the PKCS#12 password is empty")
    return line, False


def _issue(
    ctx: Context,
    email: str,
    days: int,
    key_type: pki.KeyType,
    out: Path,
    password_stdin: bool,
    renewing: str | None = None,
) -> None:
    """Issue, write the four files, record; on any failure leave nothing behind.

    `renewing`: the serial of the certificate this one renews, for the account trail.
    """
    out = _out_dir(out)
    base = _UNSAFE_FILE_CHARS.sub("_", email)
    paths = [out / f"{base}{suffix}" for suffix in (".crt", ".key", ".p12", ".legacy.p12")]
    _refuse_existing(paths)
    with ctx.services() as s:
        user = s.users.get(email)
        if user is None:
            raise click.ClickException(f"no user {email}")
        password, generated = _p12_password(password_stdin)
        ca = ctx.load_ca()
        try:
            issued = ca.issue_client_cert(email, days=days, key_type=key_type)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
        modern, legacy = issued.pkcs12(password.encode("utf-8"))
        crt, key_path, p12, legacy_p12 = paths
        made = _write_all(
            out,
            [
                (crt, issued.write_cert),
                (key_path, issued.write_private_key),
                (p12, lambda p: pki.write_secret_file(p, modern)),
                (legacy_p12, lambda p: pki.write_secret_file(p, legacy)),
            ],
        )
        try:
            record = s.certificates.add(email, issued)
        except BaseException:
            _remove(paths)
            _remove_dirs(made)
            raise
        if renewing is None:
            s.accounts.trail(email, "certificate-issued", admin_actor(), record.serial)
        else:
            detail = f"{record.serial} renews {renewing}"
            s.accounts.trail(email, "certificate-renewed", admin_actor(), detail)
    click.echo(f"issued a client certificate for {email}")
    _echo_fields(record)
    for path in paths:
        click.echo(f"wrote {path}")
    if generated:
        click.echo("PKCS#12 password (shown only now, stored nowhere):")
        click.echo(password)
    if user.auth_policy == PASSWORD:
        _warn_certificate_ignored(email)


def _warn_certificate_ignored(email: str) -> None:
    """Issued anyway (the admin may switch the policy next), but never silently useless."""
    click.echo(
        f"warning: {email} has auth policy '{PASSWORD}', which ignores certificates: "
        "this one will not log them in",
        err=True,
    )
    click.echo(
        f"to let it (password or certificate): "
        f"submitgw user set-auth {email} {PASSWORD_OR_CERTIFICATE}",
        err=True,
    )


def _echo_fields(record: CertificateRecord) -> None:
    click.echo(f"serial: {record.serial}")
    click.echo(f"fingerprint_sha256: {record.fingerprint_sha256}")
    click.echo(f"subject: {record.subject}")
    click.echo(f"not_after: {_stamp(record.not_after)}")


def _stamp(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


def _output_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--out and --p12-password-stdin, shared by issue and renew."""
    command = click.option(
        "--p12-password-stdin",
        is_flag=True,
        help="Read the PKCS#12 password from standard input (default: generate and print one).",
    )(command)
    return click.option(
        "--out",
        type=click.Path(path_type=Path),
        default=Path("."),
        show_default="the current folder",
        help="Folder for EMAIL.crt, EMAIL.key, EMAIL.p12 and EMAIL.legacy.p12 "
        "(made, mode 0700, when missing).",
    )(command)


@pki_group.command("issue")
@click.argument("email")
@click.option(
    "--days",
    type=click.IntRange(1, pki.MAX_DAYS),
    default=365,
    show_default=True,
    help=f"Validity (at most {pki.MAX_DAYS}, and never beyond the CA's).",
)
@click.option(
    "--key-type",
    type=click.Choice([str(k) for k in pki.KeyType]),
    default=str(pki.KeyType.EC),
    show_default=True,
)
@_output_options
@pass_context
def issue(
    ctx: Context, email: str, days: int, key_type: str, out: Path, p12_password_stdin: bool
) -> None:
    """Issue a client certificate for an existing user."""
    _issue(ctx, email_argument(email), days, pki.KeyType(key_type), out, p12_password_stdin)


@pki_group.command("renew")
@click.argument("serial")
@_output_options
@pass_context
def renew(ctx: Context, serial: str, out: Path, p12_password_stdin: bool) -> None:
    """Issue a new key and certificate like SERIAL's; SERIAL stays valid until revoked."""
    wanted = _serial(serial)
    with ctx.services() as s:
        old = s.certificates.get(wanted)
    if old is None:
        raise click.ClickException(f"no certificate with serial {wanted}")
    cert = x509.load_pem_x509_certificate(old.pem.encode("ascii"))
    # The old length, without the backdating every certificate gets.
    length = old.not_after - old.not_before - pki.ca.BACKDATE
    days = min(pki.MAX_DAYS, max(1, round(length / timedelta(days=1))))
    key_type = pki.KeyType.of(cert.public_key())
    _issue(ctx, old.email, days, key_type, out, p12_password_stdin, renewing=old.serial)
    click.echo(f"the old certificate {old.serial} stays valid: revoke it when no longer needed")


# --- inventory -------------------------------------------------------------------------------


def _status(record: CertificateRecord, now: datetime) -> str:
    if record.revoked:
        return "revoked"
    if record.not_after < now:
        return "expired"
    return "valid"


def _row(record: CertificateRecord, now: datetime) -> dict[str, Any]:
    return {
        "serial": record.serial,
        "user": record.email,
        "fingerprint_sha256": record.fingerprint_sha256,
        "subject": record.subject,
        "not_before": _stamp(record.not_before),
        "not_after": _stamp(record.not_after),
        "issued_at": _stamp(record.issued_at),
        "revoked": record.revoked,
        "revoked_at": _stamp(record.revoked_at),
        "revocation_reason": record.revocation_reason,
        "expired": record.not_after < now,
    }


@pki_group.command("list")
@click.option("--user", "email", metavar="EMAIL", help="Only this user's certificates.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def list_certificates(ctx: Context, email: str | None, as_json: bool) -> None:
    """List issued client certificates (revoked and expired ones included)."""
    address = email_argument(email) if email is not None else None
    with ctx.services() as s:
        records = s.certificates.list(address)
    now = datetime.now(UTC)
    if as_json:
        click.echo(json.dumps([_row(r, now) for r in records], indent=2))
        return
    for r in records:
        click.echo(f"{r.serial}\t{r.email}\t{_status(r, now)}\tnot after {_stamp(r.not_after)}")


@pki_group.command("show")
@click.argument("serial")
@pass_context
def show(ctx: Context, serial: str) -> None:
    """Show one certificate's inventory entry, then its PEM."""
    wanted = _serial(serial)
    with ctx.services() as s:
        record = s.certificates.get(wanted)
    if record is None:
        raise click.ClickException(f"no certificate with serial {wanted}")
    for name, value in _row(record, datetime.now(UTC)).items():
        click.echo(f"{name}: {json.dumps(value) if isinstance(value, bool) else value or '-'}")
    click.echo(record.pem, nl=False)


@pki_group.command("revoke")
@click.argument("serial", required=False)
@click.option("--user", "email", metavar="EMAIL", help="Revoke every certificate of this user.")
@click.option(
    "--reason",
    type=click.Choice(pki.REVOCATION_REASONS),
    default="unspecified",
    show_default=True,
    help="RFC 5280 reason, recorded and put in the CRL.",
)
@pass_context
def revoke(ctx: Context, serial: str | None, email: str | None, reason: str) -> None:
    """Revoke SERIAL, or all of a user's certificates (--user); effective at once."""
    if (serial is None) == (email is None):
        raise click.ClickException("give either SERIAL or --user EMAIL")
    wanted = _serial(serial) if serial is not None else None
    address = email_argument(email) if email is not None else None
    with ctx.services() as s:
        if wanted is not None:
            revoked = [s.certificates.revoke(wanted, reason)]
        else:
            revoked = s.certificates.revoke_user(address or "", reason)
        for record in revoked:
            detail = f"{record.serial} {reason}"
            s.accounts.trail(record.email, "certificate-revoked", admin_actor(), detail)
    if not revoked:
        click.echo(f"{address} has no unrevoked certificates")
        return
    for record in revoked:
        click.echo(f"revoked {record.serial} ({record.email}, {reason})")
    click.echo("the gateway refuses them from the next connection; 'submitgw pki crl' tells others")


@pki_group.command("crl")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    metavar="FILE",
    help="Write the CRL (PEM) here, replacing it atomically (default: standard output).",
)
@click.option(
    "--next-update-days",
    type=click.IntRange(1, pki.MAX_DAYS),
    default=7,
    show_default=True,
    help="Verifiers treat the CRL as stale after this; rebuild it more often.",
)
@pass_context
def crl(ctx: Context, out: Path | None, next_update_days: int) -> None:
    """Build a CRL of every revoked certificate, signed by the CA."""
    with ctx.services() as s:
        records = s.certificates.revoked()
    ca = ctx.load_ca()
    entries = [
        (pki.parse_serial(r.serial), r.revoked_at or r.issued_at, r.revocation_reason)
        for r in records
    ]
    pem = ca.crl(entries, next_update_days=next_update_days).public_bytes(
        serialization.Encoding.PEM
    )
    if out is None:
        click.echo(pem.decode("ascii"), nl=False)
        return
    try:
        replace_file(out, pem)
    except OSError as exc:
        raise click.ClickException(f"cannot write {out}: {exc.strerror}") from exc
    click.echo(f"wrote {out} ({len(entries)} revoked)")


# --- server certificates ---------------------------------------------------------------------


@pki_group.command("server-cert")
@click.argument("hostnames", nargs=-1, required=True)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("."),
    show_default="the current folder",
    help="Folder for server.crt and server.key.",
)
@click.option(
    "--days",
    type=click.IntRange(1, pki.MAX_DAYS),
    default=825,
    show_default=True,
    help=f"Validity (at most {pki.MAX_DAYS}, and never beyond the CA's).",
)
@pass_context
def server_cert(ctx: Context, hostnames: tuple[str, ...], out: Path, days: int) -> None:
    """Issue a TLS server certificate for HOSTNAMES (DNS names or IP addresses).

    Each must be a DNS name (letters, digits, inner hyphens; `*` only as the whole
    left-most label; xn-- form for international names) or an IPv4/IPv6 address,
    and one the CA's name constraints permit.
    """
    try:
        pki.server_names(list(hostnames))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    out = _out_dir(out)
    paths = [out / "server.crt", out / "server.key"]
    _refuse_existing(paths)
    ca = ctx.load_ca()
    try:
        issued = ca.issue_server_cert(list(hostnames), days=days)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    _write_all(out, [(paths[0], issued.write_cert), (paths[1], issued.write_private_key)])
    click.echo(f"serial: {issued.serial}")
    click.echo(f"fingerprint_sha256: {issued.fingerprint_sha256}")
    click.echo(f"not_after: {_stamp(issued.cert.not_valid_after_utc)}")
    for path in paths:
        click.echo(f"wrote {path}")
    click.echo(
        "point [tls] cert and key at them (or move them over the files those name), then "
        "reload: 'systemctl reload submitgw' or 'kill -HUP' the serve process; "
        "sessions under way keep the old certificate"
    )


def register(group: click.Group) -> None:
    group.add_command(pki_group)
