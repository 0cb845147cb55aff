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
    assert {"stack up", "topics forget", "dlq show", "produce", "sink", "demo", "dev", "pipelines"} <= {
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


#: Commands that act on one pipeline.
PIPELINE_COMMANDS = [["produce"], ["sink"], ["topics", "create"], ["topics", "forget"], ["dlq", "show"]]


@pytest.mark.parametrize("command", PIPELINE_COMMANDS, ids=" ".join)
def test_pipeline_commands_choose_among_the_shipped_pipelines(command: list[str]) -> None:
    result = CliRunner().invoke(cli, [*command, "--help"], terminal_width=200)
    assert "--pipeline [crypto_trades|transactions]" in result.output
    assert "[env var: TXP_PIPELINE; default: transactions]" in result.output
    assert "--topic" in result.output  # an override of the pipeline's topic
    refused = CliRunner().invoke(cli, [*command, "--pipeline", "equities"])
    assert refused.exit_code == 2 and "'equities' is not one of 'crypto_trades', 'transactions'" in refused.output


def test_the_pipeline_can_come_from_the_environment() -> None:
    refused = CliRunner().invoke(cli, ["produce", "--count", "1"], env={"TXP_PIPELINE": "equities"})
    assert refused.exit_code == 2
    assert "Invalid value for '--pipeline' / '-p' (env var: 'TXP_PIPELINE'): 'equities' is not one of" in refused.output


def test_pipelines_lists_each_with_its_names_and_rules() -> None:
    from tx_platform.pipelines import CRYPTO_TRADES, TRANSACTIONS

    result = CliRunner().invoke(cli, ["pipelines"], terminal_width=80)
    assert result.exit_code == 0, result.output
    cells = [line.split() for line in result.output.splitlines() if line.split()[-1:] in (["9"], ["8"])]
    assert cells == [
        ["transactions*", "transactions", "transactions", "transaction_id", "account_id",
         str(len(TRANSACTIONS.rules))],
        ["crypto_trades", "crypto.trades", "crypto_trades", "trade_id", "symbol",
         str(len(CRYPTO_TRADES.rules))],
    ]  # fmt: skip
    assert (len(TRANSACTIONS.rules), len(CRYPTO_TRADES.rules)) == (9, 8)
