"""Every command has help, and the README documents every command of the CLI contract."""

from __future__ import annotations

from pathlib import Path

import click
from click.testing import CliRunner

from node.cli import cli

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        found.append((path, command))
        if isinstance(command, click.Group):
            found += _commands(command, path + " ")
    return found


def test_every_command_has_help_and_is_in_the_readme() -> None:
    runner = CliRunner()
    for path, command in _commands(cli):
        assert command.help, f"`tongyuan {path}` has no help text"
        result = runner.invoke(cli, [*path.split(), "--help"])
        assert result.exit_code == 0, result.output
        assert f"tongyuan --dir DIR {path.split()[0]}" in README, f"README lacks `{path}`"
