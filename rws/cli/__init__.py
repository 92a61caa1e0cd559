"""The ``rws`` command line: parse, call one library function, render."""

from rws.cli.app import app

__all__ = ["app"]
