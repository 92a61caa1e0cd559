"""Every option shared by several commands, declared once as an ``Annotated`` alias.

Choices come from the registries (``rws list …``): ``--help`` shows them as ``<a|b|c>``, the
shell completes them, and an unknown value is the library's one-line ``UnknownNameError``
(``error: unknown codec 'int7'; choose one of: …``, exit 2) raised from the option's callback,
so it reaches the app's error boundary. (A ``Literal``/``Enum`` annotation would show the same
metavar, but its failed conversion prints Click's multi-line usage panel instead.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from rws.analysis.identify import IDENTIFY_METHODS
from rws.cli.parsing import parse_attacks as parse_attacks
from rws.cli.parsing import parse_corruptions as parse_corruptions
from rws.cli.parsing import parse_patch_arg as parse_patch_arg
from rws.cli.parsing import parse_tags as parse_tags
from rws.data import DATASET_SPECS
from rws.errors import UnknownNameError
from rws.methods import list_methods
from rws.methods.rws import BN_MODES
from rws.models import list_models
from rws.patching.codecs import get_codec, list_codecs
from rws.patching.sparsify import SPARSIFIERS
from rws.recipes.alpha import METRICS, parse_criterion
from rws.robustness.attacks import list_attacks
from rws.robustness.corruptions import list_corruptions
from rws.robustness.corruptions.params import TABLES
from rws.runtime.device import DEVICE_PATTERN
from rws.training.config import OPTIMIZERS, SCHEDULES
from rws.training.recalibrate import BN_MIXES

_COMPOSITE = ":"  # registered names never hold one; "module:factory", "timm:NAME", "cifar10:DIR" do


def _metavar(names: Sequence[str]) -> str:
    return "<" + "|".join(names) + ">"


def _completer(names: Sequence[str], *, listed: bool = False) -> Callable[[str], list[str]]:
    def complete(incomplete: str) -> list[str]:
        head, sep, last = incomplete.rpartition(",") if listed else ("", "", incomplete)
        return [head + sep + n for n in names if n.startswith(last)]

    return complete


def _checker(
    kind: str,
    names: Sequence[str],
    *,
    listed: bool = False,
    open_ended: bool = False,
    keywords: Sequence[str] = (),
    hints: Mapping[str, str] | None = None,
) -> Callable[[typer.Context, Any], Any]:
    def check(ctx: typer.Context, value: Any) -> Any:
        if value is None or ctx.resilient_parsing:  # nothing given, or completing the line
            return value
        items = value.split(",") if listed else [value]
        for item in (i.strip() for i in items):
            known = item in names or item in keywords or (open_ended and _COMPOSITE in item)
            if item and not known:
                error = UnknownNameError(kind, item, list(names))
                if hints and item in hints:  # the hint replaces "did you mean"
                    choices = ", ".join(error.choices)
                    error.args = (
                        f"unknown {kind} {item!r}; choose one of: {choices}; {hints[item]}",
                    )
                raise error
        return value

    return check


def choice(
    *decls: str,
    help: str,
    kind: str,
    names: Sequence[str],
    listed: bool = False,
    open_ended: bool = False,
    metavar: str | None = None,
    keywords: Sequence[str] = (),
    hints: Mapping[str, str] | None = None,
    argument: bool = False,
) -> Any:
    """A ``typer.Option`` (or ``typer.Argument``) over registered names.

    Args:
        decls: option names (``"--method"``); empty: from the parameter.
        help: the help text (the choices are shown by the metavar, not typed here).
        kind: what a name is, for the error message (``"codec"``).
        names: the valid names.
        listed: the value is a comma-separated list of names.
        open_ended: values holding ``:`` (``module:factory``, ``timm:NAME``) pass unchecked.
        metavar: shown instead of ``<name|name|…>``.
        keywords: values accepted besides the names (``all``, ``none``), not listed in errors.
        hints: name → advice appended to the error (a removed name and where it went).
        argument: a positional argument rather than an option.
    """
    make = typer.Argument if argument else typer.Option
    return make(
        *decls,
        help=help,
        metavar=metavar or _metavar([*keywords, *names]),
        callback=_checker(
            kind, names, listed=listed, open_ended=open_ended, keywords=keywords, hints=hints
        ),
        autocompletion=_completer([*keywords, *names], listed=listed),
    )


def _criterion(ctx: typer.Context, value: str | None) -> str | None:
    if value is not None and not ctx.resilient_parsing:
        parse_criterion(value)  # UsageError naming the bad metric or weight
    return value


# --- files and output ---------------------------------------------------------------------------
OutputOpt = Annotated[
    Path, typer.Option("--output", "-o", help="Output file (written atomically).")
]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Apply even where base fingerprints differ (warns).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
PlotOpt = Annotated[
    Path | None, typer.Option("--plot", help="Also draw the figure to this file (.png/.svg/.pdf).")
]

# --- patches ------------------------------------------------------------------------------------
CodecOpt = Annotated[
    str, choice(help="Delta codec (fp32 is lossless).", kind="codec", names=list_codecs())
]
BlocksizeOpt = Annotated[
    int,
    typer.Option(
        help="Elements per quantization block ("
        + "/".join(c for c in list_codecs() if get_codec(c).blockwise)
        + ")."
    ),
]
CodecMapOpt = Annotated[
    str | None,
    typer.Option(
        "--codec-map",
        help="Per-glob codecs overriding --codec (small and 1-D tensors stay fp16/fp32 by "
        "default), e.g. 'bn*=fp32,layer1.*=int8'; each glob must match a tensor; ':small' "
        "names every small tensor (':small=int8').",
        metavar="GLOB=CODEC,…",
    ),
]
SparsifyOpt = Annotated[
    str | None,
    choice(
        help="Sparsify each large delta before the codec: topk (largest magnitudes) or dare "
        "(seeded random drop, rescaled).",
        kind="sparsifier",
        names=SPARSIFIERS,
    ),
]
DensityOpt = Annotated[
    float, typer.Option(help="--sparsify: share of each tensor's elements kept, in (0, 1].")
]
MethodOpt = Annotated[
    str,
    choice(
        help="How to make the delta.",
        kind="method",
        names=list_methods(),
        hints={"rift": "RiFT (MRC, module fine-tuning, α) is its own command: rws rift --help"},
    ),
]
BnOpt = Annotated[
    str | None,
    choice(
        help="--method rws: BatchNorm tensors (default average; replace-all: every BN tensor "
        "replaced at full weight whatever α).",
        kind="bn mode",
        names=BN_MODES,
    ),
]
BnMixOpt = Annotated[
    str,
    choice(
        help="--recalibrate-bn: keep the re-estimated statistics (replace) or mix them with the "
        "patched ones by the patch's α, (1−α)·patched + α·new (alpha; the reference's ResNets).",
        kind="bn mix",
        names=BN_MIXES,
    ),
]
RunningStatsOpt = Annotated[
    bool,
    typer.Option(
        "--with-running-stats",
        help="Count BatchNorm running statistics in (left out by default: they dominate BN "
        "models' signatures).",
    ),
]
IncludeOpt = Annotated[
    list[str] | None, typer.Option("--include", help="Tensor-name glob to keep (repeatable).")
]
ExcludeOpt = Annotated[
    list[str] | None, typer.Option("--exclude", help="Tensor-name glob to drop (repeatable).")
]
OrderFromOpt = Annotated[
    str | None,
    typer.Option(
        "--order-from",
        help="Layer order for --shallow/--energy/--layers: an arch (its forward pass; see "
        "rws list models), a checkpoint in definition order, or a JSON list of names.",
        metavar="<ARCH|FILE>",
    ),
]
NameOpt = Annotated[str, typer.Option(help="Patch name stored in its metadata.")]
TagOpt = Annotated[list[str] | None, typer.Option(help="key=value label (repeatable).")]
DescriptionOpt = Annotated[str, typer.Option(help="Free text stored in the metadata.")]

# --- models, data, devices ----------------------------------------------------------------------
_ARCH = choice(
    help="Architecture: a registered model, module.path:factory or timm:NAME.",
    kind="model",
    names=list_models(),
    open_ended=True,
    metavar="<MODEL|module:factory|timm:NAME>",
)
ArchOpt = Annotated[str, _ARCH]
MaybeArchOpt = Annotated[str | None, _ARCH]
_DATA = choice(
    help="Dataset: digits (built in) or a folder: cifar10:DIR, cifar100:DIR, folder:DIR.",
    kind="dataset",
    names=list(DATASET_SPECS),
    open_ended=True,
    metavar="<" + "|".join(DATASET_SPECS) + ">",
)
DataOpt = Annotated[str, _DATA]
MaybeDataOpt = Annotated[str | None, _DATA]
_DEVICES = ("auto", "cpu", "cuda", "cuda:N")  # the names rws.runtime.device.DEVICE_PATTERN takes


def _device(ctx: typer.Context, value: str | None) -> str | None:
    if value is not None and not ctx.resilient_parsing and not DEVICE_PATTERN.match(value):
        raise UnknownNameError("device", value, list(_DEVICES))
    return value


DeviceOpt = Annotated[
    str,
    typer.Option(
        help="Where to compute: auto (CUDA when there is one, else the CPU), cpu, cuda or cuda:N.",
        metavar="<" + "|".join(_DEVICES) + ">",
        callback=_device,
        autocompletion=_completer(_DEVICES[:3]),
    ),
]
SeedOpt = Annotated[
    int,
    typer.Option(help="Seed of every random draw (initialisation, data, corruptions, attacks)."),
]

# --- corruptions and attacks --------------------------------------------------------------------
CorruptionsOpt = Annotated[
    str,
    choice(
        "--corruptions",
        "--corruption",
        help="Corruptions: all (the 15 benchmark ones), none, or a list such as fog,snow.",
        kind="corruption",
        names=list_corruptions(),
        keywords=("all", "none"),
        listed=True,
        metavar="<all|none|NAME,…>",
    ),
]
ParamsOpt = Annotated[
    str,
    choice(
        help="Severity table: cifar (make_cifar_c.py), imagenet (make_imagenet_c.py), "
        "imagecorruptions (the package COCO-C and most detection/segmentation sets were made "
        "with) or auto (cifar up to 64 px a side, else imagenet).",
        kind="severity table",
        names=list(TABLES),
        keywords=("auto",),
    ),
]
SeverityOpt = Annotated[
    str,
    typer.Option(
        "--severity", "--severities", help="Severity S, or a range LO-HI drawn per batch."
    ),
]
SeveritiesOpt = Annotated[
    str,
    typer.Option("--severities", "--severity", help="Severities: a range 1-5 or a list 1,3,5."),
]
#: what ``--attack autoattack`` (the name a RobustBench user types first) is told.
AUTOATTACK_HINT = (
    "use autoattack-lite, a lighter AutoAttack: APGD-CE, then APGD-T, then PMA on the examples "
    "still correct (worst case per example); standard AutoAttack's FAB-T and Square are not run"
)
AttackOpt = Annotated[
    str,
    choice(
        help="Attacks, one or a comma list (each attacks every variant); none: no attack. "
        "autoattack-lite = APGD-CE → APGD-T → PMA (not standard AutoAttack: no FAB-T, no Square).",
        kind="attack",
        names=list_attacks(),
        keywords=("none",),
        listed=True,
        hints={"autoattack": AUTOATTACK_HINT, "aa": AUTOATTACK_HINT},
    ),
]
EpsOpt = Annotated[str, typer.Option(help="Attack radius (L∞), e.g. 8/255 or 0.03.")]

# --- training -----------------------------------------------------------------------------------
EpochsOpt = Annotated[int, typer.Option(help="Passes over the training split.")]
LrOpt = Annotated[float, typer.Option(help="Initial learning rate.")]
MomentumOpt = Annotated[float, typer.Option(help="SGD momentum (Adam's β1).")]
DecayOpt = Annotated[float, typer.Option(help="L2 weight decay.")]
BatchOpt = Annotated[int, typer.Option(help="Images per step.")]
OptimizerOpt = Annotated[str, choice(help="Optimizer.", kind="optimizer", names=OPTIMIZERS)]
ScheduleOpt = Annotated[
    str,
    choice(
        help="Learning-rate schedule (step: ×0.1 at 40% and 80%).",
        kind="lr schedule",
        names=SCHEDULES,
    ),
]
CheckpointDirOpt = Annotated[
    Path | None, typer.Option(help="Checkpoint every epoch here; rerun to resume.")
]
StartWeightsOpt = Annotated[
    str | None, typer.Option("--weights", help="Starting checkpoint; without it, the seeded init.")
]

# --- α search -----------------------------------------------------------------------------------
CriterionOpt = Annotated[
    str,
    typer.Option(
        help="α rule: one metric or a weighted sum such as clean=1,corrupted=1.",
        metavar="<" + "|".join(METRICS) + "|a=1,b=1>",
        callback=_criterion,
        autocompletion=_completer(METRICS, listed=True),
    ),
]
IdentifyMethodOpt = Annotated[
    str, choice(help="How to match.", kind="identification method", names=IDENTIFY_METHODS)
]
