"""The ``ccpbx`` command."""

from __future__ import annotations

import click


@click.group()
def main() -> None:
    """ccpbx: a pure-Python IP-PBX with a contact-center engine."""
