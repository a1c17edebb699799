"""How a command fails on bad input: one line on stderr naming the problem and the fix, exit status 2."""
from __future__ import annotations

import sys

import click


def fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)
