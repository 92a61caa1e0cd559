"""Run the rws CLI from a checkout: ``python cli.py …``."""

from rws.cli.app import app

app(prog_name="rws")
