"""``rws similarity`` and ``rws identify``: parse, call :mod:`rws.analysis`, render.

Registered by ``rws/cli.py`` as ``app.command("similarity")(similarity_command)`` and
``app.command("identify")(identify_command)``; errors reach its one error boundary.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from rws.analysis.similarity import Matrix

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


def _matrix_table(title: str, labels: tuple[str, ...], matrix: Matrix) -> Table:
    t = Table("", *labels, title=title)
    for label, row in zip(labels, matrix, strict=True):
        t.add_row(label, *(f"{v:.3f}" for v in row))
    return t


def similarity_command(
    patches: Annotated[list[str], typer.Argument(help="Two or more signature patch files.")],
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Heatmap PNG (overall and per layer).")
    ] = None,
    per_layer: Annotated[
        bool, typer.Option("--per-layer", help="Also show one matrix per layer.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Cosine similarity of signatures on the tensors they share, overall and per layer.

    Example: rws similarity fog-1.rws.safetensors fog-2.rws.safetensors snow.rws.safetensors --plot sim.png
    """
    import rws
    from rws.analysis import plot_similarity, similarity
    from rws.cli.app import out
    from rws.io.checkpoint import check_output_path
    from rws.io.figures import save_figure

    if plot is not None:
        check_output_path(plot, patches)
    res = similarity([rws.load(p) for p in patches], per_layer=per_layer or plot is not None)
    if plot is not None:
        save_figure(plot_similarity(res), plot)
    if as_json:
        data = res.to_dict()
        if not per_layer:
            data.pop("layers")
        out.print_json(json.dumps(data))
        return
    title = f"cosine similarity over {len(res.tensors)} shared tensors"
    out.print(_matrix_table(title, res.labels, res.overall))
    if per_layer:
        for layer, matrix in res.layers.items():
            out.print(_matrix_table(f"layer {layer}", res.labels, matrix))
    if plot is not None:
        out.print(f"wrote {plot}", markup=False)


def identify_command(
    patch: Annotated[str, typer.Argument(help="Signature patch file to identify.")],
    library: Annotated[
        Path, typer.Option("--library", help="Folder of labelled signatures (index.json).")
    ] = Path("signatures"),
    method: Annotated[
        str, typer.Option(help="centroid (cosine to class means), knn or logistic.")
    ] = "centroid",
    as_json: JsonOpt = False,
) -> None:
    """Which known corruption a signature comes from, with a confidence.

    Example: rws identify new.rws.safetensors --library signatures/ --method knn
    """
    import rws
    from rws.analysis import SignatureLibrary, identify
    from rws.cli.app import out

    lib = SignatureLibrary.from_folder(library)
    res = identify(rws.load(patch), lib, method=method)
    if as_json:
        out.print_json(json.dumps(res.to_dict()))
        return
    t = Table("#", "corruption", "probability", "centroid cosine")
    for i, (c, p) in enumerate(res.ranking, 1):
        t.add_row(str(i), c, f"{p:.3f}", f"{res.similarities[c]:.3f}")
    out.print(t)
    out.print(
        f"{patch}: {res.corruption} (confidence {res.confidence:.2f}, {res.method}, "
        f"{len(lib)} signatures, {res.tensors} tensors); nearest: {res.nearest[0]} "
        f"(cosine {res.nearest[1]:.3f})",
        markup=False,
        soft_wrap=True,
    )
