#!/usr/bin/env python3
"""`uip txt2img` by path, for old command lines; the client is uip.clients.sd.txt2img."""
import typer

from uip.clients.cli import txt2img

typer.run(txt2img)
