"""Routers from files: what ``rws route`` and ``rws eval --route`` call."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from safetensors import SafetensorError, safe_open
from torch import nn

from rws.data import resolve_data
from rws.io.checkpoint import check_output_path
from rws.io.hub_fetch import resolve_path
from rws.io.hub_ref import is_hub_ref
from rws.models import load_model
from rws.recipes.validation import validation_split
from rws.routing.detector import training_batches
from rws.routing.router import Router
from rws.routing.store import KEY

__all__ = ["fit_router", "held_out_confusion", "is_router_file", "library_items", "router_for"]


def library_items(specs: Sequence[str]) -> list[Any]:
    """Library items from command-line specs: ``DIR``, ``FILE``, ``hf://…`` or
    ``FILE=CORRUPTION``."""
    items: list[Any] = []
    for spec in specs:
        path, sep, corruption = spec.rpartition("=") if "=" in spec else (spec, "", "")
        items.append((path, corruption) if sep and corruption else spec)
    return items


def is_router_file(path: str) -> bool:
    """Whether ``path`` is a saved router (a safetensors file with router settings)."""
    if not is_hub_ref(path) and not os.path.isfile(path):
        return False
    try:
        with safe_open(os.fspath(resolve_path(path)), framework="pt") as fh:
            return KEY in (fh.metadata() or {})
    except (SafetensorError, OSError):
        return False


def fit_router(
    arch: str, weights: str, library: Sequence[str], data: str, out: str, **options: Any
) -> Router:
    """Fit a router for the checkpoint ``weights`` on ``data``'s validation split and save it.

    Raises:
        OutputPathError: ``out`` would overwrite an input. See :class:`Router` for the rest.
    """
    check_output_path(out, [weights, *(s.partition("=")[0] for s in library)])
    dataset, _ = resolve_data(data)
    model = load_model(arch, weights, dataset.num_classes).eval()
    router = Router(model, library_items(library), data=dataset, **options)
    router.save(out)
    return router


def router_for(model: nn.Module, spec: str, data: Any, **options: Any) -> Router:
    """A router on ``model`` from a router file, or fitted on ``data`` (its validation split)
    for a library (folder, files, ``FILE=CORRUPTION``, comma-separated)."""
    if is_router_file(spec):
        return Router.load(spec, model)
    return Router(model, library_items(spec.split(",")), data=data, **options)


def held_out_confusion(
    router: Router, data: Any, *, n_batches: int = 8, batch_size: int = 64, seed: int = 1
) -> list[list[int]]:
    """The detector's confusion matrix (rows: true class, columns: routed class, in
    ``router.classes`` order) on fresh batches of ``data``'s validation split, drawn with
    ``seed`` (pass another seed than the router was fitted with)."""
    split = validation_split(data)
    specs = [(None, 0), *((c, i) for i, c in enumerate(router.classes) if i)]
    sev = tuple(router.settings.get("severity", (1, 5)))
    batches = training_batches(split.x, specs, n_batches=n_batches, batch_size=batch_size,
                               severity=(int(sev[0]), int(sev[1])), seed=seed)  # fmt: skip
    k = len(router.classes)
    matrix = [[0] * k for _ in range(k)]
    for xb, label in batches:
        matrix[label][router.classes.index(router.route(xb).choice)] += 1
    return matrix
