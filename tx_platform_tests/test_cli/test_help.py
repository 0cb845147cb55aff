import click
import pytest
from click.testing import CliRunner

from tx_platform.cli import cli

pytestmark = pytest.mark.unit


def _commands(group: click.Group, path: list[str]) -> list[list[str]]:
    """Every command and group under ``group``, walked from the CLI itself (no hand-kept list)."""
    found = [path]
    for name, command in sorted(group.commands.items()):
        found += _commands(command, [*path, name]) if isinstance(command, click.Group) else [[*path, name]]
    return found


COMMANDS = _commands(cli, [])


def test_the_walk_finds_the_commands_we_know() -> None:
    assert {"stack up", "topics forget", "dlq show", "produce", "sink", "demo", "dev"} <= {
        " ".join(c) for c in COMMANDS
    }


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "txp")
def test_every_command_has_help(command: list[str]) -> None:
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: " in result.output and "--help" in result.output


def test_options_say_which_environment_variable_they_read() -> None:
    result = CliRunner().invoke(cli, ["produce", "--help"], terminal_width=200)
    assert "env var: TXP_KAFKA_BOOTSTRAP" in result.output


def test_produce_rejects_negative_counts() -> None:
    result = CliRunner().invoke(cli, ["produce", "--count", "-5"])
    assert result.exit_code == 2 and "-5" in result.output
