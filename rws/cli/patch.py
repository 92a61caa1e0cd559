"""``rws extract|apply|remove|compose|scale|inspect|diff``: patch files in, patch files out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

import rws.cli.patch_report as shown
from rws.cli.console import err, out
from rws.cli.options import (
    BlocksizeOpt,
    BnMixOpt,
    BnOpt,
    CodecMapOpt,
    CodecOpt,
    DensityOpt,
    DescriptionOpt,
    DeviceOpt,
    ExcludeOpt,
    ForceOpt,
    IncludeOpt,
    JsonOpt,
    MaybeArchOpt,
    MaybeDataOpt,
    MethodOpt,
    NameOpt,
    OrderFromOpt,
    OutputOpt,
    PlotOpt,
    RunningStatsOpt,
    SeverityOpt,
    SparsifyOpt,
    TagOpt,
    parse_corruptions,
    parse_patch_arg,
    parse_tags,
)
from rws.cli.render import (
    layer_table,
    patch_summary,
    print_checkpoint,
    print_patch,
)
from rws.cli.search import (
    AlphaOpt,
    LayersOpt,
    MaxCleanDropOpt,
    MaxRobustDropOpt,
    SearchCorruptionsOpt,
    SearchCriterionOpt,
    parse_alpha,
    render_composition,
    render_operating_point,
    search_keywords,
)
from rws.data.severity import parse_severity
from rws.errors import UsageError
from rws.io.checkpoint import check_output_path
from rws.io.figures import save_figure
from rws.io.output_paths import check_output_paths
from rws.methods import method_options
from rws.methods.extract import layer_deltas
from rws.patching.describe import describe
from rws.patching.files import apply_file, remove_file
from rws.patching.order import GUESSED
from rws.patching.patch import Patch, load
from rws.patching.patch import compose as compose_patches
from rws.recipes.compose import compose as compose_searched
from rws.recipes.extract import extract as extract_searched
from rws.training.recalibrate import apply_and_recalibrate

#: ``-o`` of apply and remove: a string, so that ``out/`` still says "a folder".
CheckpointOutputOpt = Annotated[
    str,
    typer.Option(
        "--output",
        "-o",
        help="Output file; for a checkpoint folder, a folder of the same layout (unless it ends "
        "in .safetensors). Written atomically.",
    ),
]


def load_patch_args(specs: list[str]) -> list[tuple[Patch, float | None]]:
    """``PATH[:α]`` arguments → loaded patches with their α (None: not given)."""
    return [(load(p), a) for p, a in map(parse_patch_arg, specs)]


def _with_alpha(specs: list[str]) -> list[tuple[Patch, float]]:
    return [(p, 1.0 if a is None else a) for p, a in load_patch_args(specs)]


def extract(
    base: Annotated[str, typer.Argument(help="Base checkpoint (.safetensors, folder, .pt/.bin).")],
    tuned: Annotated[
        list[str],
        typer.Argument(help="Fine-tuned checkpoint(s); several only with --method rws (averaged)."),
    ],
    output: OutputOpt,
    method: MethodOpt = "delta",
    origin: Annotated[
        str | None, typer.Option(help="--method rws: the origin W0 both models were tuned from.")
    ] = None,
    bn: BnOpt = None,
    alpha: AlphaOpt = None,
    data: MaybeDataOpt = None,
    arch: MaybeArchOpt = None,
    layers: LayersOpt = None,
    corruptions: SearchCorruptionsOpt = None,
    criterion: SearchCriterionOpt = None,
    max_clean_drop: MaxCleanDropOpt = None,
    max_robust_drop: MaxRobustDropOpt = None,
    plot: PlotOpt = None,
    device: DeviceOpt = "auto",
    codec: CodecOpt = "fp32",
    blocksize: BlocksizeOpt = 64,
    codec_map: CodecMapOpt = None,
    sparsify: SparsifyOpt = None,
    density: DensityOpt = 1.0,
    shallow: Annotated[int | None, typer.Option(help="Keep the first K layers.")] = None,
    energy: Annotated[
        float | None, typer.Option(help="Keep the shallowest layers holding this energy share.")
    ] = None,
    running_stats: RunningStatsOpt = False,
    order_from: OrderFromOpt = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    name: NameOpt = "",
    tag: TagOpt = None,
    description: DescriptionOpt = "",
) -> None:
    """Extract the delta TUNED − BASE (or a Robust Weight Signature) into a patch file.

    Example: rws extract clean.safetensors fog.safetensors -o fog.rws.safetensors --codec int8 --shallow 3

    Smaller (docs/compression.md): --codec nf4 --sparsify topk --density 0.1; small and 1-D
    tensors stay fp16/fp32 unless --codec-map 'bn*=int8' says otherwise

    Signature: rws extract --method rws --origin w0.safetensors clean.safetensors fog-1.safetensors
    fog-2.safetensors -o fog.rws.safetensors (the robust delta minus its projection on the clean
    delta, both from the origin: RWS = dk − proj_dc dk)

    Operating point (α, and with --layers auto the shallow layers, chosen on the validation split so
    that clean accuracy falls at most --max-clean-drop points): add --alpha auto --data digits
    --arch resnet20 [--corruptions fog] [--layers auto] [--plot curve.png]

    Interpolation (α given, or chosen on --data): rws extract --method interpolation --alpha auto
    --data digits --arch small-cnn at.safetensors tuned.safetensors -o wise.safetensors

    Layer order (what --shallow/--energy/--layers count from the input): the forward pass of
    --arch, or of the arch the checkpoints record; else the storage order, guessed from the names
    when the file stores them sorted (safetensors.save_file, Hub uploads): then give
    --order-from resnet20 or --order-from definition-order.pt / names.json.

    RiFT is its own command: rws rift.
    """
    check_output_paths({"--output": output, "--plot": plot},
                       [base, *tuned, *([origin] if origin else [])])  # fmt: skip
    a = parse_alpha(alpha)
    search = search_keywords(alpha=a, data=data, layers=layers, corruptions=corruptions,
                             criterion=criterion, max_clean_drop=max_clean_drop,
                             max_robust_drop=max_robust_drop, plot=plot)  # fmt: skip
    given = {"origin": origin, "robust": tuned[1:], "bn": bn}
    if method == "interpolation":
        given["alpha"] = alpha
    options = method_options(method, given)  # checked here; interpolation takes α itself
    patch = extract_searched(
        base, tuned[0], method=method, alpha=a,
        **({} if method == "interpolation" else {"options": options}), layers=layers, data=data,
        arch=arch, device=device, progress=True, search=search, codec=codec, blocksize=blocksize,
        codec_map=codec_map, sparsify=sparsify, density=density,
        shallow=shallow, energy=energy, running_stats=running_stats, order=order_from,
        include=include, exclude=exclude, name=name, description=description, tags=parse_tags(tag),
    )  # fmt: skip
    patch.save(output)
    _render_extract(patch, output, plot)


def _render_extract(patch: Patch, output: Path, plot: Path | None) -> None:
    render_operating_point(patch, plot)
    selection = patch.provenance.get("selection", {})
    by_depth = selection.get("shallow") is not None or selection.get("energy") is not None
    if by_depth and selection.get("order", {}).get("source") == GUESSED:
        err.print(
            "note: the layer order was guessed from the tensor names (the base file stores them "
            "sorted); give --arch or --order-from ARCH_OR_FILE to take it from the model"
        )
    if patch.kind == "rws" and not patch.provenance.get("projection", True):
        err.print(
            "note: no --origin: the signature is the plain delta TUNED − BASE (no projection)"
        )
    out.print(f"wrote {output}: {patch_summary(describe(output))}")


def apply(
    base: Annotated[str, typer.Argument(help="Checkpoint to patch (a file or a folder).")],
    patches: Annotated[list[str], typer.Argument(help="Patch files, each optionally PATH:α.")],
    output: CheckpointOutputOpt,
    force: ForceOpt = False,
    clamp_var: Annotated[
        bool, typer.Option("--clamp-var", help="Clamp BN running variances at 0.")
    ] = False,
    recalibrate_bn: Annotated[
        str | None,
        typer.Option(help="Re-estimate BN statistics afterwards on this dataset (needs --arch)."),
    ] = None,
    arch: MaybeArchOpt = None,
    severity: SeverityOpt = "5",
    bn_mix: BnMixOpt = "replace",
    undo: shown.UndoFlag = False,
) -> None:
    """Add patches to a checkpoint: w' = w + Σ α·scale·δ (streamed, one tensor at a time).

    With --recalibrate-bn DATA --arch A, BatchNorm running statistics are then re-estimated on
    DATA's training images, corrupted by the patches' `corruption` tags at --severity (as the RWS
    reference does for ResNets); both steps or nothing is written. --bn-mix alpha keeps
    (1−α)·patched + α·re-estimated statistics, α being the patch's.

    Example: rws apply clean.safetensors fog.rws.safetensors:0.8 snow.rws.safetensors -o out.safetensors

    A Hugging Face folder (sharded, or one model.safetensors) gives a folder of the same layout:
    rws apply llm/ fog.rws.safetensors -o llm-fog/ (shards, index, config.json and the other small
    files; -o x.safetensors merges it into one file instead).
    """
    items = _with_alpha(patches)
    if undo and recalibrate_bn is not None:
        raise UsageError("--undo records the patches only: it does not go with --recalibrate-bn")
    if recalibrate_bn is None:
        res = apply_file(base, items, output, force=force, clamp_var=clamp_var, undo=undo)
    else:
        res, info = apply_and_recalibrate(
            base, items, output, arch=arch, data=recalibrate_bn,
            severity=parse_severity(severity), force=force, clamp_var=clamp_var, bn_mix=bn_mix,
        )  # fmt: skip
        err.print(f"recalibrated BatchNorm statistics: {json.dumps(info)}", markup=False)
    shown.render_apply(res)


def remove(
    patched: Annotated[str, typer.Argument(help="Checkpoint written by `rws apply`.")],
    patches: Annotated[list[str], typer.Argument(help="Patches to take off, each PATH[:α].")],
    output: CheckpointOutputOpt,
    force: Annotated[
        bool, typer.Option("--force", help="Subtract even if not in the applied stack.")
    ] = False,
    undo: shown.UndoFileOpt = None,
    strict: shown.StrictOpt = False,
) -> None:
    """Take patches off a patched checkpoint and check the restored tensors' fingerprints.

    Example: rws remove patched.safetensors snow.rws.safetensors -o fog_only.safetensors

    Only tensors that hash to the base fingerprints again are reported restored bit for bit; the
    rest are unverified (--strict: exit 4, nothing written). With the undo file of
    `rws apply --undo`, every tensor comes back bit for bit.
    """
    args = load_patch_args(patches)
    res = remove_file(patched, args, output, force=force, undo=undo, strict=strict)
    shown.render_remove(res)


def compose(
    patches: Annotated[list[str], typer.Argument(help="Patches, each optionally PATH:α.")],
    output: OutputOpt,
    codec: CodecOpt = "fp32",
    blocksize: BlocksizeOpt = 64,
    name: NameOpt = "",
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Sum patches taken against different bases (refused by default)."
        ),
    ] = False,
    ties: Annotated[
        bool,
        typer.Option(
            "--ties",
            help="TIES-style sign election: per element, the mean of "
            "the terms of the elected sign instead of the sum.",
        ),
    ] = False,
    codec_map: CodecMapOpt = None,
    sparsify: SparsifyOpt = None,
    density: DensityOpt = 1.0,
    search: Annotated[
        bool, typer.Option("--search", help="Choose each patch's coefficient on --data.")
    ] = False,
    base: Annotated[
        str | None, typer.Option(help="--search: the checkpoint the composition patches.")
    ] = None,
    arch: MaybeArchOpt = None,
    data: MaybeDataOpt = None,
    corruptions: SearchCorruptionsOpt = None,
    max_clean_drop: MaxCleanDropOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Weighted sum Σ α·P of patches, re-encoded with --codec; --search chooses the α.

    Example: rws compose fog.rws.safetensors:0.5 snow.rws.safetensors:0.5 -o both.rws.safetensors

    Searched: rws compose fog.rws.safetensors noise.rws.safetensors --search --base clean.safetensors
    --arch resnet20 --data digits --max-clean-drop 1 -o both.rws.safetensors (coefficients that
    maximise the mean accuracy over the patches' corruptions on the validation split)
    """
    check_output_path(output, [parse_patch_arg(p)[0] for p in patches])
    items = _with_alpha(patches)
    kw = dict(codec=codec, blocksize=blocksize, force=force, name=name, ties=ties,
              codec_map=codec_map, sparsify=sparsify, density=density)  # fmt: skip
    if not search:
        if any(v is not None for v in (base, data, corruptions, max_clean_drop)):
            raise UsageError("--base, --data, --corruptions and --max-clean-drop go with --search")
        patch = compose_patches(items, **kw)
    else:
        patch = compose_searched(items, search=True, model=base, arch=arch, data=data,
                                 **search_keywords_compose(corruptions, max_clean_drop),
                                 device=device, progress=True, **kw)  # fmt: skip
        render_composition(patch, [p.label for p, _ in items])
    patch.save(output)
    out.print(f"wrote {output}: {patch_summary(describe(output))}")


def search_keywords_compose(corruptions: str | None, max_clean_drop: float | None) -> dict:
    """``rws compose --search``'s optional settings as library keywords."""
    kw: dict[str, Any] = {}
    if corruptions is not None:
        kw["corruptions"] = list(parse_corruptions(corruptions))
    if max_clean_drop is not None:
        kw["max_clean_drop"] = max_clean_drop
    return kw


def scale(
    patch: Annotated[str, typer.Argument(help="Patch file.")],
    alpha: Annotated[float, typer.Argument(help="Factor for the patch's scale.")],
    output: OutputOpt,
) -> None:
    """Multiply a patch's scale by α (exact: the stored deltas are not re-encoded).

    Example: rws scale fog.rws.safetensors 0.5 -o fog_half.rws.safetensors
    """
    check_output_path(output, [patch])
    scaled = load(patch) * alpha
    scaled.save(output)
    out.print(f"wrote {output}: scale {scaled.scale:g}")


def inspect(
    file: Annotated[str, typer.Argument(help="A patch or a checkpoint.")],
    as_json: JsonOpt = False,
) -> None:
    """Show a patch (codecs, sizes, compression, norms, metadata) or a checkpoint (applied stack).

    Example: rws inspect fog.rws.safetensors --json
    """
    desc = describe(file)
    if as_json:  # plain: rich's print_json re-parses and highlights (minutes for a big header)
        typer.echo(json.dumps(desc, indent=2))
    elif desc["type"] == "patch":
        print_patch(out, desc)
    else:
        print_checkpoint(out, desc)


def diff(
    base: Annotated[str, typer.Argument(help="Base checkpoint.")],
    tuned: Annotated[str, typer.Argument(help="Fine-tuned checkpoint.")],
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    plot: PlotOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Per-layer relative delta norms ‖δ‖/‖w‖ in depth order, weights and BatchNorm running
    statistics apart (--plot: a bar chart of the weights').

    Example: rws diff clean.safetensors fog.safetensors --plot layers.png
    """
    check_output_paths({"--plot": plot}, [base, tuned])
    deltas = layer_deltas(base, tuned, include=include, exclude=exclude)
    rows = [shown.layer_row(la) for la in deltas]
    if plot is not None:
        from rws.analysis.plots import plot_layer_deltas

        rel = [r["weights"]["relative"] for r in rows]
        fig = plot_layer_deltas(
            [r["layer"] for r in rows],
            rel,
            title="relative delta norm per layer (weights; BN running statistics apart)",
        )
        save_figure(fig, plot)
    if as_json:
        out.print_json(json.dumps(rows))
        return
    out.print(layer_table(rows))
    if plot is not None:
        out.print(f"wrote {plot}")
