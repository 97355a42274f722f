"""What every command module shares: how a command stops on a user's mistake.

Used by cordlite/cli.py, eval/cli.py, deploy/cli.py, testbed/cli.py and data_tools/cli.py; it
imports only click, so `cordlite --help` stays instant.
"""

from __future__ import annotations

import sys

import click


def fail(message: str, code: int = 2) -> None:
    """Print `error: MESSAGE` on stderr and exit with `code` (2: bad usage or input, 1: the work failed)."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)
