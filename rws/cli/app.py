"""The ``rws`` app: global options, the one error boundary, and every command's registration.

The command modules (:mod:`rws.cli.patch`, :mod:`rws.cli.eval` …) parse, make one library call
and render; they never import this module.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import threading
import warnings
from collections.abc import Iterator
from typing import Annotated, Any

import click
import typer
from rich.logging import RichHandler
from typer.core import TyperGroup

from rws._version import __version__
from rws.cli import analysis, demo, hub, listing, patch, rift, route, train
from rws.cli import eval as eval_
from rws.cli.console import err, out
from rws.errors import RwsError
from rws.io.outputs import track_inputs
from rws.runtime.progress import ENV_OFF


def _click_modules() -> list[Any]:
    mods = [click.exceptions]
    with contextlib.suppress(ImportError):  # typer >= 0.2x vendors click as typer._click
        from typer._click import exceptions

        mods.append(exceptions)
    return mods


_USAGE_ERRORS = tuple({m.UsageError for m in _click_modules()})
_HELP_ERRORS = tuple(
    {m.NoArgsIsHelpError for m in _click_modules() if hasattr(m, "NoArgsIsHelpError")}
)

#: stopped like Ctrl-C: the exception unwinds every write, so temp files are removed
STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived; raised in the main thread like Ctrl-C's ``KeyboardInterrupt``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop(signum: int, _frame: object) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def _stop_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP raise :class:`Terminated` for the block (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {s: signal.signal(s, _stop) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def _fail(message: str, code: int) -> typer.Exit:
    err.print(f"error: {message}", markup=False, soft_wrap=True)
    return typer.Exit(code)


def _usage(e: Any) -> typer.Exit:
    """Click's usage error (bad option, missing argument) as one line, not a panel."""
    where = e.ctx.command_path if e.ctx is not None else "rws"
    return _fail(f"{e.format_message().rstrip('.')} (see: {where} --help)", e.exit_code)


class _Group(TyperGroup):
    """The one error boundary: an ``RwsError`` prints ``error: <message>`` and exits with its code
    (traceback only with ``--debug``), as do usage errors (exit 2), the operating system's
    refusals (exit 1) and SIGTERM/SIGHUP (exit 128 + the signal; unfinished outputs removed).
    Warnings raised meanwhile are shown after a success and never before an error line. Every
    file a command reads is tracked: no output may replace it (:mod:`rws.io.outputs`). Any other
    exception is a bug and keeps its traceback."""

    def make_context(self, info_name: str | None, args: list[str], **extra: Any) -> typer.Context:
        try:
            return super().make_context(info_name, args, **extra)
        except _HELP_ERRORS:
            raise
        except _USAGE_ERRORS as e:
            raise _usage(e) from None

    def invoke(self, ctx: typer.Context) -> Any:
        debug = bool(ctx.params.get("debug"))
        with warnings.catch_warnings(record=True) as caught:
            try:
                with track_inputs(), _stop_signals():
                    result = super().invoke(ctx)
            except RwsError as e:
                if debug:
                    _replay(caught)
                    raise
                raise _fail(str(e), e.exit_code) from None
            except _HELP_ERRORS:
                raise
            except _USAGE_ERRORS as e:
                raise _usage(e) from None
            except Terminated as e:
                name = signal.Signals(e.signum).name
                raise _fail(
                    f"stopped by {name}; unfinished outputs removed", 128 + e.signum
                ) from None
            except OSError as e:
                if debug or e.errno == errno.EPIPE:
                    raise
                where = f"{e.filename}: " if e.filename else ""
                raise _fail(f"{where}{e.strerror or e}", 1) from None
        _replay(caught)
        return result


def _replay(caught: list[warnings.WarningMessage]) -> None:
    for w in caught:
        warnings.showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)


app = typer.Typer(
    name="rws",
    help="Weight-space robustness patching: extract, quantize, apply, compose and remove deltas.",
    cls=_Group,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain text: never read as rich markup
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
    "route": route.route_command,
}
for _name, _command in COMMANDS.items():
    app.command(_name)(_command)
