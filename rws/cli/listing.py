"""``rws list codecs|methods|models|attacks|corruptions``: what each registry holds."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Column, Table

from rws.cli.console import out
from rws.cli.options import JsonOpt, choice
from rws.methods import METHODS
from rws.models import MODELS
from rws.patching.codecs import CODECS
from rws.registry import Registry
from rws.robustness.attacks import ATTACKS
from rws.robustness.corruptions import CORRUPTION_REGISTRY

_WRAP = 72  # summaries wrap at this width, in a terminal and in a pipe alike

REGISTRIES: dict[str, Registry] = {
    "codecs": CODECS,
    "methods": METHODS,
    "models": MODELS,
    "attacks": ATTACKS,
    "corruptions": CORRUPTION_REGISTRY,
}


def list_command(
    kind: Annotated[
        str,
        choice(
            help="What to list: " + ", ".join(REGISTRIES) + ".",
            kind="registry",
            names=[*REGISTRIES],
            argument=True,
            metavar="KIND",
        ),
    ] = "codecs",
    pattern: Annotated[str, typer.Argument(help="Only names matching this glob.")] = "*",
    as_json: JsonOpt = False,
) -> None:
    """List registered codecs, methods, models, attacks or corruptions with their summaries.

    Example: rws list corruptions '*blur' --json
    """
    registry = REGISTRIES[kind]
    rows = [registry.entry(n) for n in registry.names(pattern)]
    extra = _kernel if kind == "corruptions" else None
    if as_json:
        items = [{"name": e.name, "summary": e.summary, "url": e.url} for e in rows]
        if extra:
            items = [{**d, "kernel": extra(e)} for d, e in zip(items, rows, strict=True)]
        out.print_json(json.dumps(items))
        return
    t = Table(Column("name", no_wrap=True), Column("summary", max_width=_WRAP, overflow="fold"))
    if extra:
        t.add_column("kernel", max_width=_WRAP, overflow="fold")
    for e in rows:
        t.add_row(e.name, e.summary, *([extra(e)] if extra else []))
    out.print(t)


def _kernel(entry: Any) -> str:
    """A corruption's fidelity to the reference: ``reference`` or ``approximate: why``."""
    why = entry.info.get("approximate")
    return f"approximate: {why}" if why else "reference"
