"""``rws eval``: a model before and after each patch, on the same corrupted and attacked inputs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from rws.cli.console import err, out
from rws.cli.options import (
    ArchOpt,
    AttackOpt,
    CorruptionsOpt,
    DeviceOpt,
    EpsOpt,
    ParamsOpt,
    SeedOpt,
    SeveritiesOpt,
    parse_corruptions,
    parse_patch_arg,
)
from rws.data import DATASET_SPECS, resolve_data
from rws.data.severity import parse_severities
from rws.io.checkpoint import check_output_path
from rws.models import load_model
from rws.patching.patch import load
from rws.robustness import distributed
from rws.robustness.config import EvalConfig
from rws.robustness.corruptions.params import reference_data
from rws.robustness.evaluate import evaluate
from rws.robustness.report import Report

EvalDataOpt = Annotated[
    str,
    typer.Option(
        help="Dataset: " + ", ".join(DATASET_SPECS) + " or cifar10c:DIR (released -C arrays)."
    ),
]


@contextlib.contextmanager
def _process_group(device: str) -> Iterator[None]:
    """Join the ``torchrun`` process group for the block, if the environment describes one."""
    started = distributed.init_from_env(device)
    try:
        yield
    finally:
        if started:
            import torch.distributed

            torch.distributed.destroy_process_group()


def _render(report: Report, outputs: list[tuple[Path | None, str]]) -> None:
    for w in report.settings["warnings"]:
        err.print(f"warning: {w}", markup=False, soft_wrap=True)
    out.print(report.table())
    s = report.settings
    table = f"corruption table {s['table']}, " if s.get("table") and s.get("corruptions") else ""
    out.print(
        f"{s['n_examples']} examples of {s['data']}, {table}seed {s['seed']}, {s['device']}, "
        f"inputs sha256 {s['inputs_sha256'][:12]}…, {s['timing']['elapsed_s']:.1f} s",
        markup=False,
    )
    approx = [c for c, k in (s.get("kernels") or {}).items() if k == "approximate"]
    if approx:
        out.print(
            f"approximate kernels, not comparable with {reference_data(s.get('table'))} numbers: "
            f"{', '.join(approx)} "
            "(rws list corruptions says how each departs)",
            markup=False,
            soft_wrap=True,
        )
    for path, method in outputs:
        if path is not None:
            getattr(report, method)(path)
            out.print(f"wrote {path}", markup=False)


def eval_command(
    arch: ArchOpt,
    weights: Annotated[str, typer.Option(help="Checkpoint of the unpatched model.")],
    patch: Annotated[
        list[str] | None, typer.Option(help="Patch file PATH[:α]; one variant each (repeatable).")
    ] = None,
    data: EvalDataOpt = "digits",
    corruptions: CorruptionsOpt = "all",
    severities: SeveritiesOpt = "1-5",
    params: ParamsOpt = "auto",
    attack: AttackOpt = "none",
    eps: EpsOpt = "8/255",
    steps: Annotated[
        int | None, typer.Option(help="Attack iterations (its default if unset).")
    ] = None,
    n_examples: Annotated[int | None, typer.Option(help="First N test examples.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 256,
    device: DeviceOpt = "auto",
    amp: Annotated[bool, typer.Option("--amp", help="Mixed precision forwards on CUDA.")] = False,
    seed: SeedOpt = 0,
    baseline: Annotated[
        str | None, typer.Option(help="Baseline report.json for mCE, or 'alexnet'.")
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Refuse (exit 7) when gradient masking is suspected.")
    ] = False,
    checks: Annotated[
        bool,
        typer.Option(
            "--checks",
            help="Also check the attack converged on 128 images: 4× steps, ε/2ε/4ε, 2 seeds "
            "(numbers in the report, flags as warnings).",
        ),
    ] = False,
    out_json: Annotated[Path | None, typer.Option("--out", help="JSON report (atomic).")] = None,
    csv: Annotated[
        Path | None, typer.Option("--csv", help="CSV, one row per variant × metric.")
    ] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="PNG heatmaps and bars.")] = None,
) -> None:
    """Evaluate a model before and after each patch on the same corrupted and attacked inputs.

    Example: rws eval --arch resnet20 --weights clean.pt --patch fog.rws.safetensors:0.8 --attack pgd

    Distributed: torchrun --nproc-per-node 4 -m rws eval … (rank 0 prints and writes).
    """
    config = dict(corruptions=parse_corruptions(corruptions),
                  severities=parse_severities(severities), attack=attack, eps=eps, steps=steps,
                  n_examples=n_examples, batch_size=batch_size, device=device, amp=amp,
                  seed=seed, strict=strict, params=params, checks=checks)  # fmt: skip
    EvalConfig(**config)  # every setting checked before any file is read
    specs = [parse_patch_arg(p) for p in patch or []]
    for o in (out_json, csv, plot):
        if o is not None:
            check_output_path(o, [weights, *(p for p, _ in specs)])
    with _process_group(device):
        dataset, source = resolve_data(data)
        model = load_model(arch, weights, dataset.num_classes)
        patches = [load(p) if a is None else (load(p), a) for p, a in specs]
        report = evaluate(model, dataset, EvalConfig(**config, corruption_source=source),
                          patches=patches, baseline=baseline, progress=True)  # fmt: skip
        main = distributed.is_main()
    if main:
        _render(report, [(out_json, "save_json"), (csv, "save_csv"), (plot, "save_plots")])
