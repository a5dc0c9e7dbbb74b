"""`python -m uip.gateway ...`: the same as `uip gateway ...` (used by `uip serve`)."""

import sys

import typer

from uip.gateway.cli import gateway
from uip.gateway.spec import GatewaySpecError
from uip.launch.command import LaunchError

if __name__ == "__main__":
    try:
        typer.run(gateway)
    except (LaunchError, GatewaySpecError, ValueError) as e:
        typer.echo(f"uip gateway: {e}", err=True)
        sys.exit(1)
