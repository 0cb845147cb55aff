import pytest
from click.testing import CliRunner

from tx_platform.cli import cli

pytestmark = pytest.mark.unit

COMMANDS = [[], ["stack"], ["stack", "up"], ["stack", "down"], ["stack", "status"], ["stack", "env"],
            ["stack", "setup"], ["stack", "jars"], ["topics"], ["topics", "create"], ["dlq"], ["dlq", "show"],
            ["produce"], ["sink"],
            ["demo"], ["dev"]]  # fmt: skip


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
