"""Every command's `--help` opens with worked examples, and each example still parses.

Rules proven here: no command (group or leaf, new ones included) lacks examples; they
come before the options; an example that no longer matches its command's arguments
and options fails here, not in an admin's terminal.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from submitgw.cli import commands
from submitgw.cli.context import Context
from submitgw.cli.examples import EXAMPLES
from tests.support.cli import run


def every_command() -> Iterator[tuple[str, click.Command]]:
    def walk(command: click.Command, path: str) -> Iterator[tuple[str, click.Command]]:
        yield path, command
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                yield from walk(sub, f"{path} {name}".strip())

    yield from walk(commands(), "")


PATHS = [path for path, _ in every_command()]


def test_the_table_names_only_real_commands() -> None:
    assert sorted(EXAMPLES) == sorted(PATHS)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p or "submitgw")
def test_help_opens_with_examples(path: str) -> None:
    result = run(*path.split(), "--help")

    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "Examples:" in text
    assert text.index("Examples:") < text.index("Options:")
    for example in EXAMPLES[path]:
        assert example in text


def parse(argv: list[str]) -> None:
    """Parse an example as `submitgw` would, down to the command it names; run nothing.

    A group's own options come before the first word that names one of its commands.
    """
    command: click.Command = commands()
    parent: click.Context | None = None
    name = "submitgw"
    while isinstance(command, click.Group):
        at = next(i for i, word in enumerate(argv) if word in command.commands)
        ctx = command.make_context(name, list(argv), parent=parent)
        if parent is None:
            ctx.obj = Context(Path("submitgw.toml"))
        command, parent, name, argv = command.commands[argv[at]], ctx, argv[at], argv[at + 1 :]
    command.make_context(name, argv, parent=parent)


@pytest.mark.parametrize(
    "example",
    [example for path in PATHS for example in EXAMPLES[path]],
)
def test_every_example_parses(example: str) -> None:
    words = shlex.split(example.split("|")[-1])
    assert words[0] == "submitgw"

    parse(words[1:])
