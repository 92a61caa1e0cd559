"""``rws eval``: a model before and after each patch, on the same corrupted and attacked inputs."""

from __future__ import annotations

import contextlib
import os
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
    choice,
    parse_attacks,
    parse_corruptions,
    parse_patch_arg,
)
from rws.data import DATASET_SPECS, resolve_data
from rws.data.severity import parse_severities
from rws.errors import UsageError
from rws.io.output_paths import check_output_paths
from rws.models import load_model, model_spec
from rws.patching.patch import load
from rws.robustness import distributed
from rws.robustness.config import EvalConfig
from rws.robustness.corruptions.params import reference_data
from rws.robustness.evaluate import evaluate
from rws.robustness.report import Report
from rws.routing.build import router_for
from rws.runtime.precision import PRECISIONS
from rws.runtime.seed import GENERATOR_PLACES

_EVAL_DATA = [*DATASET_SPECS, "cifar10c:DIR"]

# --- throughput (docs/gpu.md) -------------------------------------------------------------------
PrecisionOpt = Annotated[
    str,
    choice(
        help="Forward precision: fp32, or bf16/fp16 autocast (attack losses and gradients stay "
        "fp32; attacked images are scored in fp32).",
        kind="precision",
        names=list(PRECISIONS),
    ),
]
ChannelsLastOpt = Annotated[
    bool, typer.Option("--channels-last", help="Channels-last memory (same predictions).")
]
CompileOpt = Annotated[
    bool,
    typer.Option("--compile", help="torch.compile the model for the clean/corrupted forwards."),
]
GeneratorOpt = Annotated[
    str,
    choice(
        help="Where random draws are made: device (CUDA generator on a GPU, the CPU one on the "
        "CPU) or cpu (the same images on every device).",
        kind="generator",
        names=list(GENERATOR_PLACES),
    ),
]
BatchSizeOpt = Annotated[
    str,
    typer.Option(
        help="Images per forward pass (also seeded and sharded per batch), or auto: seeded in "
        "batches of 256, forwarded as many at once as fit the GPU (256 on the CPU).",
        metavar="<N|auto>",
    ),
]


def parse_batch_size(text: str) -> int | str:
    """``"auto"`` or a positive integer (``EvalConfig`` checks the sign).

    Raises:
        UsageError: anything else.
    """
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"--batch-size must be a positive integer or auto, not {text!r}") from None


EvalDataOpt = Annotated[
    str,
    choice(
        help="Dataset: digits (built in), a folder (cifar10:DIR, cifar100:DIR, folder:DIR), or "
        "cifar10c:DIR (released -C arrays).",
        kind="dataset",
        names=_EVAL_DATA,
        open_ended=True,
        metavar="<" + "|".join(_EVAL_DATA) + ">",
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
    route: Annotated[
        str | None,
        typer.Option(
            help="A router file (rws route) or a signature library to route: adds a "
            "'routed' variant (docs/routing.md)."
        ),
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
    batch_size: BatchSizeOpt = "256",
    device: DeviceOpt = "auto",
    amp: Annotated[bool, typer.Option("--amp", help="Mixed precision forwards on CUDA.")] = False,
    precision: PrecisionOpt = "fp32",
    channels_last: ChannelsLastOpt = False,
    compile_model: CompileOpt = False,
    generator: GeneratorOpt = "device",
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
    img_size: Annotated[
        int | None,
        typer.Option(
            "--img-size",
            min=1,
            help="Image side: folder data resized to it, and "
            "models whose shape depends on it (timm img_size) built for it.",
        ),
    ] = None,
    normalize: Annotated[
        str | None,
        typer.Option(
            "--normalize",
            help="Input statistics the model applies: none (weights "
            "trained on raw [0, 1] inputs), cifar10, cifar100, imagenet or "
            "M1,M2,M3/S1,S2,S3 (default: the model's own).",
        ),
    ] = None,
    model_kw: Annotated[
        list[str] | None,
        typer.Option("--model-kw", help="KEY=VALUE for the model's factory (repeatable)."),
    ] = None,
) -> None:
    """Evaluate a model before and after each patch on the same corrupted and attacked inputs.

    Example: rws eval --arch resnet20 --weights clean.pt --patch fog.rws.safetensors:0.8 --attack pgd

    Distributed: torchrun --nproc-per-node 4 -m rws eval … (rank 0 prints and writes).
    """
    config = dict(corruptions=parse_corruptions(corruptions),
                  severities=parse_severities(severities), attack=parse_attacks(attack), eps=eps, steps=steps,
                  n_examples=n_examples, batch_size=parse_batch_size(batch_size), device=device,
                  amp=amp, seed=seed, strict=strict, params=params, checks=checks,
                  precision=precision, channels_last=channels_last, compile=compile_model,
                  generator=generator)  # fmt: skip
    EvalConfig(**config)  # every setting checked before any file is read
    specs = [parse_patch_arg(p) for p in patch or []]
    files = [f for f in (baseline, route) if f and os.path.exists(f)]  # --out over them: refused
    check_output_paths({"--out": out_json, "--csv": csv, "--plot": plot},
                       [weights, *(p for p, _ in specs), *files])  # fmt: skip
    with _process_group(device):
        dataset, source = resolve_data(data, size=img_size)
        spec = model_spec(arch, img_size=img_size, normalize=normalize, model_kw=model_kw)
        model = load_model(spec, weights, dataset.num_classes, input_shape=dataset.test.x.shape[1:])
        patches = [load(p) if a is None else (load(p), a) for p, a in specs]
        routed = [("routed", router_for(model, route, dataset))] if route else []
        report = evaluate(model, dataset, EvalConfig(**config, corruption_source=source),
                          patches=patches, baseline=baseline, progress=True,
                          models=routed)  # fmt: skip
        main = distributed.is_main()
    if main:
        _render(report, [(out_json, "save_json"), (csv, "save_csv"), (plot, "save_plots")])
