"""Options and formatting shared by the command-line modules."""

from __future__ import annotations

from datetime import UTC, datetime

import click

output_option = click.option(
    "--output",
    "-o",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Output format.",
)

config_option = click.option(
    "--config",
    "config_path",
    metavar="FILE",
    help="Configuration file (default: $RUNNER_CONFIG, or ./runner.yaml when it exists).",
)


def when(epoch: float | None) -> str:
    """A stored time (epoch seconds) as UTC text."""
    return (
        "-" if epoch is None else datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")
    )
