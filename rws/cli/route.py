"""``rws route``: fit a test-time router over a signature library and save it (docs/routing.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from rws.cli.console import out
from rws.cli.options import ArchOpt, DataOpt, OutputOpt, SeedOpt, choice, parse_corruptions
from rws.routing import DETECTORS, MODES
from rws.routing.build import fit_router, held_out_confusion
from rws.routing.router import Router

LibraryOpt = Annotated[
    list[str],
    typer.Option(
        "--library",
        "-l",
        help="Signatures: a library folder, a patch file or hf:// reference (tagged with its "
        "corruption), or FILE=CORRUPTION (repeatable).",
    ),
]


def _render(router: Router, confusion: list[list[int]], path: Path) -> None:
    lib = Table("corruption", "signature", "scale", title="routed signatures")
    for e in router.entries:
        lib.add_row(e.corruption, e.patch.label, f"{e.patch.scale:g}")
    out.print(lib)
    conf = Table("true \\ routed", *router.classes,
                 title="detector on fresh validation batches of 64 (seed + 1)")  # fmt: skip
    for name, row in zip(router.classes, confusion, strict=True):
        conf.add_row(name, *map(str, row))
    out.print(conf)
    right = sum(confusion[i][i] for i in range(len(confusion)))
    total = sum(map(sum, confusion))
    d = router.detector
    out.print(f"detector {d.kind} ({d.head.kind}), mode {router.mode}: {right}/{total} batches "
              f"routed right; wrote {path}", markup=False)  # fmt: skip


def route_command(
    arch: ArchOpt,
    weights: Annotated[str, typer.Option(help="Checkpoint of the model the signatures patch.")],
    library: LibraryOpt,
    output: OutputOpt,
    data: DataOpt = "digits",
    detector: Annotated[
        str, choice(help="What recognises the shift.", kind="detector", names=list(DETECTORS))
    ] = "input",
    mode: Annotated[
        str, choice(help="hard: one signature per batch; soft: a mix.", kind="mode", names=MODES)
    ] = "hard",
    scales: Annotated[
        str, typer.Option(help="patch (each patch's scale) or auto (α searched per signature).")
    ] = "patch",
    max_clean_drop: Annotated[
        float | None, typer.Option(help="--scales auto: clean budget in points (default none).")
    ] = None,
    negatives: Annotated[
        str | None, typer.Option(help="Corruptions without a signature, taught as 'none'.")
    ] = None,
    fit_batches: Annotated[int, typer.Option(help="Training batches per class.")] = 48,
    seed: SeedOpt = 0,
) -> None:
    """Fit a router (which signature, if any, each incoming batch needs) and save it.

    Example: rws route --arch resnet20 --weights signatures/clean.safetensors -l signatures/
    -o router.safetensors
    """
    neg = parse_corruptions(negatives) if negatives else ()
    router = fit_router(arch, weights, library, data, str(output), detector=detector,
                        mode=mode, scales=scales, max_clean_drop=max_clean_drop, negatives=neg,
                        fit_batches=fit_batches, seed=seed)  # fmt: skip
    confusion = held_out_confusion(router, data, n_batches=max(2, fit_batches // 6), seed=seed + 1)
    _render(router, confusion, output)
