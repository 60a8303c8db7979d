"""`submitgw serve`: run the gateway in the foreground."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from pathlib import Path

import click

from submitgw import config as config_mod
from submitgw.cli.context import Context, pass_context
from submitgw.config import Config, ConfigError, make_smarthost, parse_listen
from submitgw.services import audit


def apply_flags(
    cfg: Config,
    listen: str | None,
    listen_tls: str | None,
    smarthosts: tuple[str, ...],
    listen_selfservice: str | None = None,
) -> Config:
    """`override`, for the command line: a bad value is a one-line error."""
    try:
        return override(cfg, listen, listen_tls, smarthosts, listen_selfservice)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


def override(
    cfg: Config,
    listen: str | None,
    listen_tls: str | None,
    smarthosts: tuple[str, ...],
    listen_selfservice: str | None = None,
) -> Config:
    """Flags override the file; a flag smarthost takes the file's shared [smarthost] options.

    Also applied again on every reload, so a flag keeps winning over the file.
    """
    if listen is not None:
        cfg = cfg.replace(
            submission=dataclasses.replace(cfg.submission, listen=parse_listen(listen, "--listen"))
        )
    if listen_tls is not None:
        cfg = cfg.replace(
            submissions=dataclasses.replace(
                cfg.submissions, listen=parse_listen(listen_tls, "--listen-tls")
            )
        )
    if listen_selfservice is not None:
        cfg = cfg.replace(
            selfservice=dataclasses.replace(
                cfg.selfservice,
                listen=parse_listen(listen_selfservice, "--listen-selfservice"),
            )
        )
    if smarthosts:
        template = cfg.smarthost.servers[0]
        shared = {
            f.name: getattr(template, f.name)
            for f in dataclasses.fields(template)
            if f.name not in {"host", "port"}
        }
        servers = tuple(make_smarthost(a, shared, Path.cwd()) for a in smarthosts)
        cfg = cfg.replace(smarthost=dataclasses.replace(cfg.smarthost, servers=servers))
    return cfg


@click.command("serve")
@click.option("--listen", metavar="HOST:PORT|off", help="Submission listener (STARTTLS).")
@click.option("--listen-tls", metavar="HOST:PORT|off", help="Implicit-TLS listener (RFC 8314).")
@click.option(
    "--smarthost", "smarthosts", multiple=True, metavar="HOST:PORT", help="Repeatable; in order."
)
@click.option("--listen-selfservice", metavar="HOST:PORT|off", help="Self-service HTTPS site.")
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    metavar="N",
    help="Processes serving (default: [server] workers; 0: one per core).",
)
# Internal: how the supervisor of `--workers` starts each worker.
@click.option("--worker", "worker_spec", hidden=True)
@pass_context
def serve_command(
    ctx: Context,
    listen: str | None,
    listen_tls: str | None,
    smarthosts: tuple[str, ...],
    listen_selfservice: str | None,
    workers: int | None,
    worker_spec: str | None,
) -> None:
    """Run the gateway until SIGTERM or SIGINT; SIGHUP reloads the configuration."""
    cfg = apply_flags(ctx.config, listen, listen_tls, smarthosts, listen_selfservice)
    source = ctx.config.path or ctx.path
    from submitgw.app import workers as workers_mod

    spec = workers_mod.Spec.loads(worker_spec) if worker_spec else None
    count = (
        spec.count
        if spec
        else workers_mod.worker_count(cfg.server.workers if workers is None else workers)
    )

    def reread() -> Config:
        """On SIGHUP: the same file, the same flags over it, this worker's part of the caps."""
        fresh = override(
            config_mod.load(source), listen, listen_tls, smarthosts, listen_selfservice
        )
        return workers_mod.share(fresh, count)

    for path in (cfg.tls.cert, cfg.tls.key):
        if not path.is_file():
            raise click.ClickException(f"TLS file {path} not found (see [tls] in {ctx.path})")
    # Here, not at the top: the web and SMTP server stack is only needed to serve, and
    # every other command (one process per admin action) starts faster without it.
    from submitgw.app import gateway

    with ctx.services() as s:
        if spec is not None:
            audit.setup_logging(cfg.log, spec.index)
            role = gateway.WorkerRole(spec.index, spec.sockets(), socket.socket(fileno=spec.line))
            code = asyncio.run(gateway.serve(workers_mod.share(cfg, count), s.db, reread, role))
        elif count > 1:
            audit.setup_logging(cfg.log)
            # The supervisor uses no database: each worker opens its own.
            s.db.dispose()
            code = asyncio.run(workers_mod.supervise(cfg, count))
        else:
            audit.setup_logging(cfg.log)
            code = asyncio.run(gateway.serve(cfg, s.db, reread))
    raise SystemExit(code)


def register(group: click.Group) -> None:
    group.add_command(serve_command)
