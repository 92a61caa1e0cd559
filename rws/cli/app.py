"""The ``rws`` command line: parses, calls the library, renders with rich. No logic of its own."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table
from typer.core import TyperGroup

import rws
from rws.cli.analysis import identify_command, similarity_command
from rws.cli.demo import demo_command
from rws.cli.eval import eval_command
from rws.cli.hub import pull_command, push_command
from rws.cli.rift import advtrain_command, mrc_command, rift_command
from rws.cli.train import finetune_command
from rws.errors import RwsError, UsageError
from rws.io.checkpoint import check_output_path


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
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

# --- shared options -----------------------------------------------------------------------------
OutOpt = Annotated[Path, typer.Option("--output", "-o", help="Output file (written atomically).")]
CodecOpt = Annotated[
    str, typer.Option(help="Delta codec: fp32 (lossless), fp16, bf16, int8, bnb8, nf4, fp4.")
]
BlockOpt = Annotated[int, typer.Option(help="Elements per quantization block (int8/bnb8/nf4/fp4).")]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Apply even where base fingerprints differ (warns).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
IncludeOpt = Annotated[
    list[str] | None, typer.Option("--include", help="Tensor-name glob to keep (repeatable).")
]
ExcludeOpt = Annotated[
    list[str] | None, typer.Option("--exclude", help="Tensor-name glob to drop (repeatable).")
]


def _version(value: bool) -> None:
    if value:
        out.print(f"rws {rws.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More logs.")] = 0,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
) -> None:
    """rws: Robust Weight Signatures and RiFT deltas as quantized safetensors patches."""
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(
        level=level, format="%(message)s", handlers=[RichHandler(console=err, show_path=False)]
    )


def parse_patch_arg(spec: str) -> tuple[str, float | None]:
    """``"fog.safetensors:0.8"`` → ``("fog.safetensors", 0.8)``; no ``:α`` → ``(path, None)``."""
    path, sep, tail = spec.rpartition(":")
    if sep and path:
        try:
            alpha = float(tail)
        except ValueError:
            return spec, None
        return path, alpha
    return spec, None


def _load_patches(specs: list[str]) -> list[tuple[rws.Patch, float | None]]:
    return [(rws.load(p), a) for p, a in map(parse_patch_arg, specs)]


def _alpha(text: str | None) -> float | str:
    if text is None or text == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"--alpha {text!r}: give a number or auto") from None


def _tags(items: list[str] | None) -> dict[str, str]:
    tags = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--tag {item!r}: expected key=value")
        tags[key] = value
    return tags


def _ratio(x: float | None) -> str:
    return f"{x:.1f}×" if x else "n/a"


def _size(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _patch_summary(desc: dict[str, Any]) -> str:
    return (
        f"{desc['tensors_stored']} tensors stored ({desc['tensors_skipped_zero']} zero deltas "
        f"skipped), {_size(desc['file_bytes'] or desc['stored_bytes'])}: "
        f"{_ratio(desc['ratio_vs_model_fp32'])} smaller than the full fp32 model, "
        f"{_ratio(desc['ratio_vs_touched_fp32'])} smaller than its tensors in fp32"
    )


# --- commands -----------------------------------------------------------------------------------


@app.command()
def extract(
    base: Annotated[str, typer.Argument(help="Base checkpoint (.safetensors, folder, .pt/.bin).")],
    tuned: Annotated[
        list[str],
        typer.Argument(help="Fine-tuned checkpoint(s); several only with --method rws (averaged)."),
    ],
    output: OutOpt,
    method: Annotated[
        str, typer.Option(help="How to make the delta: delta, rws, interpolation or rift.")
    ] = "delta",
    origin: Annotated[
        str | None, typer.Option(help="--method rws: the origin W0 both models were tuned from.")
    ] = None,
    bn: Annotated[
        str | None, typer.Option(help="--method rws: BatchNorm tensors: average, delta or skip.")
    ] = None,
    alpha: Annotated[
        str | None,
        typer.Option(help="--method interpolation: the scale α, or auto (needs --data)."),
    ] = None,
    data: Annotated[
        str | None, typer.Option(help="--alpha auto: validation data (digits, cifar10:DIR, …).")
    ] = None,
    arch: Annotated[str | None, typer.Option(help="--alpha auto: the architecture.")] = None,
    criterion: Annotated[
        str, typer.Option(help="--alpha auto: clean, corrupted, robust or clean=1,corrupted=1.")
    ] = "clean",
    max_robust_drop: Annotated[
        float | None, typer.Option(help="--alpha auto: largest PGD-accuracy fall (fraction).")
    ] = None,
    plot: Annotated[Path | None, typer.Option(help="--alpha auto: the α curve plot.")] = None,
    device: Annotated[str, typer.Option(help="--alpha auto: cpu, cuda[:n] or auto.")] = "auto",
    codec: CodecOpt = "fp32",
    blocksize: BlockOpt = 64,
    shallow: Annotated[int | None, typer.Option(help="Keep the first K layers.")] = None,
    energy: Annotated[
        float | None, typer.Option(help="Keep the shallowest layers holding this energy share.")
    ] = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    name: Annotated[str, typer.Option(help="Patch name stored in its metadata.")] = "",
    tag: Annotated[list[str] | None, typer.Option(help="key=value label (repeatable).")] = None,
    description: Annotated[str, typer.Option(help="Free text stored in the metadata.")] = "",
) -> None:
    """Extract the delta TUNED − BASE (or a Robust Weight Signature) into a patch file.

    Example: rws extract clean.safetensors fog.safetensors -o fog.rws.safetensors --codec int8 --shallow 3

    Signature: rws extract --method rws --origin w0.safetensors clean.safetensors fog-1.safetensors
    fog-2.safetensors -o fog.rws.safetensors (the projection of REFERENCES: RWS = dk − proj_dc dk)
    """
    check_output_path(output, [base, *tuned, *([origin] if origin else [])])
    if plot is not None:
        check_output_path(plot, [base, *tuned])
    options: dict[str, Any] = {}
    if method == "rws":
        options = {"origin": origin, "robust": tuned[1:], "bn": bn or "average"}
    elif origin or bn or len(tuned) > 1:
        raise UsageError("--origin, --bn and several TUNED checkpoints need --method rws")
    if (method == "interpolation") != (alpha is not None):
        raise UsageError("--method interpolation takes --alpha A|auto (and only it does)")
    if alpha not in (None, "auto") and (data or plot or max_robust_drop is not None):
        raise UsageError("--data, --plot and --max-robust-drop go with --alpha auto")
    common = dict(codec=codec, blocksize=blocksize, shallow=shallow, energy=energy,
                  include=include, exclude=exclude, name=name, description=description,
                  tags=_tags(tag))  # fmt: skip
    if method == "interpolation":
        patch = rws.interpolate(
            base, tuned[0], alpha=_alpha(alpha), data=data, arch=arch, criterion=criterion,
            max_robust_drop=max_robust_drop, device=device, progress=True, **common,
        )  # fmt: skip
    else:
        patch = rws.extract(base, tuned[0], method=method, **common, **options)
    patch.save(output)
    if "alpha_curve" in patch.provenance:
        from rws.cli.rift import alpha_table
        from rws.io.figures import save_figure
        from rws.recipes.alpha import AlphaCurve
        from rws.recipes.plots import plot_alpha_curve

        curve = AlphaCurve.from_dict(patch.provenance["alpha_curve"])
        out.print(alpha_table(curve))
        if plot is not None:
            save_figure(plot_alpha_curve(curve, title="interpolation"), plot)
            out.print(f"wrote {plot}", markup=False)
    if method == "rws" and not patch.provenance.get("projection", True):
        err.print(
            "note: no --origin: the signature is the plain delta TUNED − BASE (no projection)"
        )
    out.print(f"wrote {output}: {_patch_summary(rws.describe(output))}")


@app.command()
def apply(
    base: Annotated[str, typer.Argument(help="Checkpoint to patch.")],
    patches: Annotated[list[str], typer.Argument(help="Patch files, each optionally PATH:α.")],
    output: OutOpt,
    force: ForceOpt = False,
    clamp_var: Annotated[
        bool, typer.Option("--clamp-var", help="Clamp BN running variances at 0.")
    ] = False,
    recalibrate_bn: Annotated[
        str | None,
        typer.Option(help="Re-estimate BN statistics afterwards on this dataset (needs --arch)."),
    ] = None,
    arch: Annotated[str | None, typer.Option(help="Architecture, for --recalibrate-bn.")] = None,
    severity: Annotated[
        str, typer.Option(help="--recalibrate-bn: severity S or LO-HI of the corrupted data.")
    ] = "5",
) -> None:
    """Add patches to a checkpoint: w' = w + Σ α·scale·δ (streamed, one tensor at a time).

    With --recalibrate-bn DATA --arch A, BatchNorm running statistics are then re-estimated on
    DATA's training images, corrupted by the patches' `corruption` tags (as the RWS reference does
    for ResNets).

    Example: rws apply clean.safetensors fog.rws.safetensors:0.8 snow.rws.safetensors -o out.safetensors
    """
    items = [(p, 1.0 if a is None else a) for p, a in _load_patches(patches)]
    if recalibrate_bn is None:
        res = rws.apply_file(base, items, output, force=force, clamp_var=clamp_var)
    else:
        from rws.cli.train import parse_severity
        from rws.io.atomic import atomic_output
        from rws.training.recalibrate import recalibrate_file

        if arch is None:
            raise UsageError("--recalibrate-bn needs --arch (the model to run the data through)")
        sev = parse_severity(severity)
        check_output_path(output, [base, *[p.source for p, _ in items if p.source]])
        tags = [p.tags["corruption"] for p, _ in items if "corruption" in p.tags]
        with atomic_output(output) as tmp:  # both steps or nothing
            res = rws.apply_file(base, items, tmp, force=force, clamp_var=clamp_var)
            info = recalibrate_file(tmp, tmp, arch=arch, data=recalibrate_bn, corruptions=tags,
                                    severity=sev, label=f"{base} + patches")  # fmt: skip
        res.output = str(output)
        err.print(f"recalibrated BatchNorm statistics: {json.dumps(info)}", markup=False)
    for w in res.report.warnings:
        err.print(f"warning: {w}", markup=False)
    out.print(
        f"wrote {res.output}: {res.report.touched} tensors patched, base fingerprints "
        f"{res.report.exact}/{res.report.checked} matched; applied stack: "
        + ", ".join(f"{e['name']}:{e['scale']:g}" for e in res.stack)
    )


@app.command()
def remove(
    patched: Annotated[str, typer.Argument(help="Checkpoint written by `rws apply`.")],
    patches: Annotated[list[str], typer.Argument(help="Patches to take off, each PATH[:α].")],
    output: OutOpt,
    force: Annotated[
        bool, typer.Option("--force", help="Subtract even if not in the applied stack.")
    ] = False,
) -> None:
    """Take patches off a patched checkpoint and check the restored tensors' fingerprints.

    Example: rws remove patched.safetensors snow.rws.safetensors -o fog_only.safetensors
    """
    res = rws.remove_file(patched, _load_patches(patches), output, force=force)
    rep = res.report
    out.print(
        f"wrote {res.output}: {rep.touched} tensors restored, {rep.exact}/{rep.checked} bit-exact "
        "against the base fingerprints"
        + (
            f" (the rest within one float32 rounding: {', '.join(rep.inexact[:5])}"
            + (", …)" if len(rep.inexact) > 5 else ")")
            if rep.inexact
            else ""
        )
    )


@app.command()
def compose(
    patches: Annotated[list[str], typer.Argument(help="Patches, each optionally PATH:α.")],
    output: OutOpt,
    codec: CodecOpt = "fp32",
    blocksize: BlockOpt = 64,
    name: Annotated[str, typer.Option(help="Name of the composed patch.")] = "",
    force: ForceOpt = False,
) -> None:
    """Weighted sum Σ α·P of patches, re-encoded with --codec.

    Example: rws compose fog.rws.safetensors:0.5 snow.rws.safetensors:0.5 -o both.rws.safetensors
    """
    check_output_path(output, [parse_patch_arg(p)[0] for p in patches])
    items = [(p, 1.0 if a is None else a) for p, a in _load_patches(patches)]
    patch = rws.compose(items, codec=codec, blocksize=blocksize, force=force, name=name)
    patch.save(output)
    out.print(f"wrote {output}: {_patch_summary(rws.describe(output))}")


@app.command()
def scale(
    patch: Annotated[str, typer.Argument(help="Patch file.")],
    alpha: Annotated[float, typer.Argument(help="Factor for the patch's scale.")],
    output: OutOpt,
) -> None:
    """Multiply a patch's scale by α (exact: the stored deltas are not re-encoded).

    Example: rws scale fog.rws.safetensors 0.5 -o fog_half.rws.safetensors
    """
    check_output_path(output, [patch])
    p = rws.load(patch) * alpha
    p.save(output)
    out.print(f"wrote {output}: scale {p.scale:g}")


@app.command()
def inspect(
    file: Annotated[str, typer.Argument(help="A patch or a checkpoint.")],
    as_json: JsonOpt = False,
) -> None:
    """Show a patch (codecs, sizes, compression, norms, metadata) or a checkpoint (applied stack)."""
    desc = rws.describe(file)
    if as_json:
        out.print_json(json.dumps(desc))
        return
    if desc["type"] == "patch":
        _render_patch(desc)
    else:
        _render_checkpoint(desc)


def _render_patch(d: dict[str, Any]) -> None:
    out.print(
        f"[bold]patch[/] {d['path']}  kind={d['kind']} scale={d['scale']:g} name={d['name']!r}"
    )
    out.print(_patch_summary(d), markup=False)
    t = Table("tensor", "shape", "codec", "bytes", "rel. error", "‖δ‖/‖w‖")
    for r in d["tensors"]:
        rel = r["relative_delta"]
        t.add_row(
            r["name"], "×".join(map(str, r["shape"])), r["codec"], _size(r["bytes"]),
            f"{r['rel_error']:.4f}" if r["rel_error"] is not None else "",
            f"{rel:.4f}" if rel is not None else "",
        )  # fmt: skip
    out.print(t)
    prov = {k: v for k, v in d["provenance"].items() if k != "selection"}
    out.print("provenance: " + json.dumps(prov), markup=False, soft_wrap=True)
    if d["tags"] or d["description"]:
        out.print(f"tags: {d['tags']}  description: {d['description']}", markup=False)


def _render_checkpoint(d: dict[str, Any]) -> None:
    out.print(
        f"[bold]checkpoint[/] {d['path']}: {d['tensors_total']} tensors, "
        f"{d['numel']:,} elements, {_size(d['file_bytes'])}"
    )
    t = Table("tensor", "shape", "dtype")
    for r in d["tensors"]:
        t.add_row(r["name"], "×".join(map(str, r["shape"])), r["dtype"])
    out.print(t)
    if d["applied"]:
        out.print("applied stack (oldest first):")
        for e in d["applied"]:
            out.print(
                f"  {e.get('name')}  scale={e.get('scale')}  sha256={str(e.get('sha256'))[:12]}"
            )
    else:
        out.print("applied stack: empty")


@app.command()
def diff(
    base: Annotated[str, typer.Argument(help="Base checkpoint.")],
    tuned: Annotated[str, typer.Argument(help="Fine-tuned checkpoint.")],
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    plot: Annotated[Path | None, typer.Option(help="Write a bar chart PNG here.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Per-layer relative delta norms ‖δ‖/‖w‖ in depth order."""
    layers = rws.layer_deltas(base, tuned, include=include, exclude=exclude)
    rows = [
        {"layer": la.layer, "tensors": len(la.tensors), "delta_l2": la.delta_l2,
         "base_l2": la.base_l2, "relative": la.relative}
        for la in layers
    ]  # fmt: skip
    if plot is not None:
        from rws.analysis.plots import plot_layer_deltas
        from rws.io.figures import save_figure

        save_figure(
            plot_layer_deltas([r["layer"] for r in rows], [r["relative"] for r in rows]), plot
        )
    if as_json:
        out.print_json(json.dumps(rows))
        return
    t = Table("#", "layer", "tensors", "‖δ‖", "‖w‖", "‖δ‖/‖w‖")
    for i, r in enumerate(rows):
        t.add_row(
            str(i), r["layer"], str(r["tensors"]), f"{r['delta_l2']:.4g}", f"{r['base_l2']:.4g}",
            f"{r['relative']:.4g}",
        )  # fmt: skip
    out.print(t)
    if plot is not None:
        out.print(f"wrote {plot}")


@app.command("list")
def list_(
    kind: Annotated[str, typer.Argument(help="codecs, methods or models.")] = "codecs",
) -> None:
    """List registered codecs, methods or models."""
    from rws.methods import METHODS
    from rws.models import MODELS
    from rws.patching.codecs import CODECS

    registries = {"codecs": CODECS, "methods": METHODS, "models": MODELS}
    if kind not in registries:
        raise UsageError(f"cannot list {kind!r}; choose one of: {', '.join(registries)}")
    t = Table("name", "summary")
    for entry in registries[kind]:
        t.add_row(entry.name, entry.summary)
    out.print(t)


app.command("eval")(eval_command)
app.command("demo")(demo_command)
app.command("finetune")(finetune_command)
app.command("similarity")(similarity_command)
app.command("identify")(identify_command)
app.command("push")(push_command)
app.command("pull")(pull_command)
app.command("advtrain")(advtrain_command)
app.command("mrc")(mrc_command)
app.command("rift")(rift_command)


def run() -> None:  # pragma: no cover - console entry point used by `python -m rws`
    app(prog_name="rws")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
