"""The ``rws`` app: global options, the one error boundary, and every command's registration.

The command modules (:mod:`rws.cli.patch`, :mod:`rws.cli.eval` …) parse, make one library call
and render; they never import this module.
"""

from __future__ import annotations

import logging
import os
from typing import Annotated, Any

import typer
from rich.logging import RichHandler
from typer.core import TyperGroup

from rws._version import __version__
from rws.cli import analysis, demo, hub, listing, patch, rift, train
from rws.cli import eval as eval_
from rws.cli.console import err, out
from rws.errors import RwsError
from rws.runtime.progress import ENV_OFF


class _Group(TyperGroup):
    """The one error boundary: an ``RwsError`` prints ``error: <message>`` and exits with its code
    (traceback only with ``--debug``); any other exception is a bug and keeps its traceback."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RwsError as e:
            if ctx.params.get("debug"):
                raise
            err.print(f"error: {e}", markup=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None


app = typer.Typer(
    name="rws",
    help="Weight-space robustness patching: extract, quantize, apply, compose and remove deltas.",
    cls=_Group,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        out.print(f"rws {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More logs.")] = 0,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help=f"No progress bars (also: {ENV_OFF}=1).")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
) -> None:
    """rws: Robust Weight Signatures and RiFT deltas as quantized safetensors patches."""
    if quiet:
        os.environ[ENV_OFF] = "1"  # read by rws.runtime.progress: every bar of this process
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(
        level=level, format="%(message)s", handlers=[RichHandler(console=err, show_path=False)]
    )


COMMANDS = {
    "extract": patch.extract,
    "apply": patch.apply,
    "remove": patch.remove,
    "compose": patch.compose,
    "scale": patch.scale,
    "inspect": patch.inspect,
    "diff": patch.diff,
    "list": listing.list_command,
    "eval": eval_.eval_command,
    "finetune": train.finetune_command,
    "advtrain": train.advtrain_command,
    "mrc": rift.mrc_command,
    "rift": rift.rift_command,
    "similarity": analysis.similarity_command,
    "identify": analysis.identify_command,
    "push": hub.push_command,
    "pull": hub.pull_command,
    "demo": demo.demo_command,
}
for _name, _command in COMMANDS.items():
    app.command(_name)(_command)
