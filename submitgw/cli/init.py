"""`submitgw init`: a complete, movable setup folder in one step."""

from __future__ import annotations

import shlex
import shutil
import socket
import sys
from pathlib import Path

import click

import pki
from submitgw import config as config_mod
from submitgw.cli.services import open_services
from submitgw.config import DEFAULT_CONFIG_NAME, render_default_config

LAYOUT = {
    "config": Path(DEFAULT_CONFIG_NAME),
    "database": Path("submitgw.db"),
    "ca_cert": Path("ca/ca.crt"),
    "ca_key": Path("ca/ca.key"),
    "server_cert": Path("tls/server.crt"),
    "server_key": Path("tls/server.key"),
}


@click.command("init")
@click.option("--dir", "directory", required=True, type=click.Path(path_type=Path))
@click.option("--hostname", help="Name of this gateway (default: this machine's FQDN).")
@click.option(
    "--smarthost", default="127.0.0.1:25", show_default=True, help="Internal MTA, HOST:PORT."
)
@click.option(
    "--server-name",
    "extra_names",
    multiple=True,
    metavar="NAME",
    help="Another DNS name or IP address clients use for this gateway (repeatable). "
    "With the hostname, localhost and 127.0.0.1, the only server names the CA can certify.",
)
@click.option(
    "--ca-domain",
    "ca_domains",
    multiple=True,
    metavar="DOMAIN",
    help="Limit the CA to client certificates for addresses at DOMAIN or its subdomains "
    "(repeatable; a NameConstraints extension that verifiers enforce).",
)
def init_command(
    directory: Path,
    hostname: str | None,
    smarthost: str,
    extra_names: tuple[str, ...],
    ca_domains: tuple[str, ...],
) -> None:
    """Create DIR: commented config, migrated SQLite database, CA and server certificate.

    The CA may certify only this gateway's names for servers (and, with --ca-domain,
    only those mail domains for clients), as mail clients are told to trust it.
    """
    hostname = (hostname or socket.getfqdn() or "localhost").lower()
    names = [hostname, *extra_names, "localhost", "127.0.0.1"]
    try:
        pki.server_names(names)
    except ValueError as exc:
        raise click.ClickException(f"{exc} (see --hostname and --server-name)") from exc
    if directory.exists() and not directory.is_dir():
        raise click.ClickException(f"{directory} exists and is not a folder")
    targets = {name: directory / rel for name, rel in LAYOUT.items()}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing:
        raise click.ClickException(
            f"{directory} already holds a submitgw setup ({existing[0]}); refusing to overwrite it"
        )
    try:
        ca = pki.CA.create(
            f"submitgw CA for {hostname}",
            permitted_domains=list(ca_domains) or None,
            server_names=names,
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    for sub in ("ca", "tls"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    (directory / "ca").chmod(0o700)

    ca.write(targets["ca_cert"], targets["ca_key"])
    server = ca.issue_server_cert(names)
    server.write_private_key(targets["server_key"])
    server.write_cert(targets["server_cert"])

    # The config may later hold a database password and the database holds the password
    # hashes: both are for the gateway's eyes only (SQLite gives its WAL files the same mode).
    pki.write_secret_file(
        targets["config"], render_default_config(hostname, smarthost).encode("utf-8")
    )
    pki.write_secret_file(targets["database"], b"")
    cfg = config_mod.load(targets["config"])
    with open_services(cfg.database.url, cfg, require_current=False) as s:
        s.db.upgrade()

    click.echo(f"Created a submitgw setup in {directory}:")
    for label, name in (
        ("configuration", "config"),
        ("database", "database"),
        ("CA certificate (give it to mail clients)", "ca_cert"),
        ("CA private key", "ca_key"),
        ("server certificate", "server_cert"),
        ("server private key", "server_key"),
    ):
        click.echo(f"  {label}: {targets[name]}")
    shown = ", ".join(str(n.value) for n in pki.server_names(names))
    click.echo(f"The CA can certify these server names only: {shown}")
    click.echo(f"Next: {submitgw_command()} --config {targets['config']} user add you@example.org")


def submitgw_command() -> str:
    """`submitgw` when the shell finds this very program by that name, else its full path.

    Run as /opt/submitgw/bin/submitgw from a shell whose PATH lacks that folder, a bare
    `submitgw` in the hint would not be found, or would be another installation.
    """
    here = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    found = shutil.which("submitgw")
    if found is not None and (here is None or Path(found).resolve() == here):
        return "submitgw"
    if here is not None and here.name == "submitgw" and here.is_file():
        return shlex.quote(str(here))
    # Started as `python -m submitgw` (or not from a console script at all).
    return f"{shlex.quote(sys.executable)} -m submitgw"


def register(group: click.Group) -> None:
    group.add_command(init_command)
