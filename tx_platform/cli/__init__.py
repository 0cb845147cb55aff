"""The `txp` command line."""

from tx_platform.cli._main import cli, main

__all__ = ["cli", "main"]
