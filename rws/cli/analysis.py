"""``rws similarity`` and ``rws identify``: signatures compared, and matched to known corruptions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Column, Table

from rws.analysis import SignatureLibrary, identify, plot_similarity, similarity
from rws.analysis.identify import Identification
from rws.analysis.library import SHIPPED
from rws.analysis.similarity import Matrix
from rws.cli.console import out
from rws.cli.options import IdentifyMethodOpt, JsonOpt, PlotOpt, RunningStatsOpt
from rws.io.checkpoint import check_output_path
from rws.io.figures import save_figure
from rws.patching.patch import load


def _matrix_table(title: str, labels: tuple[str, ...], matrix: Matrix) -> Table:
    t = Table(Column("", overflow="fold"), *labels, title=title)
    for label, row in zip(labels, matrix, strict=True):
        t.add_row(label, *(f"{v:.3f}" for v in row))
    return t


def similarity_command(
    patches: Annotated[list[str], typer.Argument(help="Two or more signature patch files.")],
    plot: PlotOpt = None,
    per_layer: Annotated[
        bool, typer.Option("--per-layer", help="Also show one matrix per layer.")
    ] = False,
    running_stats: RunningStatsOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Cosine similarity of signatures on the tensors they share, overall and per layer.

    BatchNorm running statistics are left out unless --with-running-stats. --plot draws
    heatmaps (overall and per layer).

    Example: rws similarity fog-1.rws.safetensors fog-2.rws.safetensors snow.rws.safetensors --plot sim.png
    """
    if plot is not None:
        check_output_path(plot, patches)
    res = similarity([load(p) for p in patches], per_layer=per_layer or plot is not None,
                     running_stats=running_stats)  # fmt: skip
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


#: what each method's score is: a ranking, not a calibrated probability.
SCORES = {
    "centroid": "score: softmax of the centroid cosines",
    "knn": "score: distance-weighted neighbour vote",
    "logistic": "score: logistic regression's predict_proba, uncalibrated",
}


def _render_identification(patch: str, res: Identification, signatures: int) -> None:
    t = Table("#", Column("corruption", overflow="fold"), "score", "centroid cosine")
    for i, (c, p) in enumerate(res.ranking, 1):
        t.add_row(str(i), c, f"{p:.3f}", f"{res.similarities[c]:.3f}")
    out.print(t)
    out.print(
        f"{patch}: {res.corruption} (score {res.confidence:.2f}, {SCORES[res.method]}; "
        f"{signatures} signatures, {res.tensors} tensors); nearest: {res.nearest[0]} "
        f"(cosine {res.nearest[1]:.3f})",
        markup=False,
        soft_wrap=True,
    )


def identify_command(
    patch: Annotated[str, typer.Argument(help="Signature patch file to identify.")],
    library: Annotated[
        Path,
        typer.Option(
            "--library",
            help="Folder of labelled signatures (index.json); default: the one shipped with rws.",
        ),
    ] = SHIPPED,
    method: IdentifyMethodOpt = "centroid",
    running_stats: RunningStatsOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Which known corruption a signature comes from, with a score per corruption.

    --method: centroid (cosine to class means; score: their softmax), knn (score: the
    neighbours' weighted vote) or logistic (score: predict_proba). A score ranks the
    corruptions; it is not a calibrated probability. BatchNorm running statistics are left out
    of the features unless --with-running-stats.

    Example: rws identify new.rws.safetensors --library signatures/ --method knn
    """
    lib = SignatureLibrary.from_folder(library)
    res = identify(load(patch), lib, method=method, running_stats=running_stats)  # type: ignore[arg-type]
    if as_json:
        out.print_json(json.dumps(res.to_dict()))
    else:
        _render_identification(patch, res, len(lib))
