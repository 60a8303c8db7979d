"""Worked examples at the top of every command's `--help`.

Kept in one table so that the test suite can check that every command has some and
that each one still parses (tests/cli/test_help.py).
"""

from __future__ import annotations

import click

CFG = "--config /etc/submitgw/submitgw.toml"

EXAMPLES: dict[str, tuple[str, ...]] = {
    "": (
        f"submitgw {CFG} user add alice@example.org",
        "submitgw user list --config /etc/submitgw/submitgw.toml",
    ),
    "init": (
        "submitgw init --dir /etc/submitgw --hostname smtp.example.org --smarthost 10.0.0.25:25",
    ),
    "serve": (
        f"submitgw {CFG} serve",
        "submitgw serve --listen 127.0.0.1:2587 --listen-tls off --smarthost 10.0.0.25:25",
    ),
    "user": (
        "submitgw user add alice@example.org",
        "submitgw user list --json",
    ),
    "user add": (
        "submitgw user add alice@example.org",
        "printf '%s\\n' \"$PW\" | submitgw user add bob@example.org --password-stdin",
    ),
    "user passwd": (
        "submitgw user passwd alice@example.org",
        "submitgw user passwd alice@example.org --expire",
    ),
    "user set-auth": ("submitgw user set-auth alice@example.org password+certificate",),
    "user disable": ("submitgw user disable alice@example.org",),
    "user enable": ("submitgw user enable alice@example.org",),
    "user delete": ("submitgw user delete alice@example.org",),
    "user list": ("submitgw user list", "submitgw user list --json"),
    "user history": ("submitgw user history alice@example.org --limit 10",),
    "user sender": ("submitgw user sender add alice@example.org sales@example.org",),
    "user sender add": (
        "submitgw user sender add alice@example.org sales@example.org",
        "submitgw user sender add alice@example.org @example.org",
    ),
    "user sender remove": ("submitgw user sender remove alice@example.org sales@example.org",),
    "user sender list": ("submitgw user sender list alice@example.org",),
    "user app-password": ("submitgw user app-password add alice@example.org --label phone",),
    "user app-password add": ("submitgw user app-password add alice@example.org --label phone",),
    "user app-password list": ("submitgw user app-password list alice@example.org",),
    "user app-password revoke": ("submitgw user app-password revoke alice@example.org 3",),
    "user set-limit": (
        "submitgw user set-limit alice@example.org --messages-per-hour 500",
        "submitgw user set-limit alice@example.org --messages-per-hour default",
    ),
    "user limits": ("submitgw user limits alice@example.org",),
    "user unlock": ("submitgw user unlock alice@example.org",),
    "user set-networks": (
        "submitgw user set-networks alice@example.org 192.0.2.0/24 2001:db8::/32",
        "submitgw user set-networks alice@example.org --clear",
    ),
    "access": ("submitgw access deny 198.51.100.0/24", "submitgw access check 198.51.100.7"),
    "access deny": ("submitgw access deny 198.51.100.0/24 --comment 'spam source'",),
    "access allow": ("submitgw access allow 192.0.2.10",),
    "access list": ("submitgw access list",),
    "access remove": ("submitgw access remove 4",),
    "access check": ("submitgw access check 198.51.100.7",),
    "pki": ("submitgw pki issue alice@example.org --out certs/", "submitgw pki list"),
    "pki issue": (
        "submitgw pki issue alice@example.org --out certs/",
        "submitgw pki issue alice@example.org --key-type rsa --days 90",
    ),
    "pki renew": ("submitgw pki renew 4F:2A:91 --out certs/",),
    "pki list": ("submitgw pki list --user alice@example.org",),
    "pki show": ("submitgw pki show 4F:2A:91",),
    "pki revoke": (
        "submitgw pki revoke 4F:2A:91 --reason keyCompromise",
        "submitgw pki revoke --user alice@example.org",
    ),
    "pki crl": ("submitgw pki crl --out /var/www/submitgw.crl",),
    "pki server-cert": ("submitgw pki server-cert smtp.example.org 192.0.2.25 --out tls/",),
    "db": ("submitgw db status", "submitgw db upgrade"),
    "db upgrade": ("submitgw db upgrade",),
    "db status": ("submitgw db status",),
    "audit": (
        "submitgw audit search --message-id '<a1b2c3@mail.example.org>'",
        "submitgw audit prune",
    ),
    "audit search": (
        "submitgw audit search --message-id '<a1b2c3@mail.example.org>'",
        "submitgw audit search --recipient complainer@example.net --since 7d",
        "submitgw audit search --user alice@example.org --since 2026-12-01 --until 2026-12-07",
        "submitgw audit search --ip 198.51.100.0/24 --since 2h --json",
        "submitgw audit search --queue-id 01M8YBHZ0MJFQYDYG2",
    ),
    "audit prune": ("submitgw audit prune", "submitgw audit prune --older-than 90"),
    "db copy": (
        "submitgw db copy --to postgresql+psycopg://submitgw@db.example.org/submitgw",
        "submitgw db copy --to sqlite:////var/backups/submitgw-copy.db",
    ),
}


def with_examples(help_text: str, examples: tuple[str, ...]) -> str:
    """The examples right after the first paragraph (the summary `--help` lists show)."""
    summary, _, rest = help_text.partition("\n\n")
    # \b keeps click from rewrapping the example lines.
    block = "\b\nExamples:\n" + "\n".join(f"  {example}" for example in examples)
    return "\n\n".join(part for part in (summary, block, rest) if part)


def attach(command: click.Command, path: str = "") -> None:
    """Put each command's examples into its help, once (commands are built once per process
    but `submitgw.cli.commands()` may be called more often)."""
    examples = EXAMPLES.get(path)
    if examples and "\nExamples:\n" not in (command.help or ""):
        command.help = with_examples(command.help or "", examples)
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            attach(sub, f"{path} {name}".strip())
