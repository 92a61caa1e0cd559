"""``rws mrc`` and ``rws rift``: module robust criticality, and the RiFT pipeline to a patch."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Annotated

import typer
from torch import nn

from rws.cli.console import out
from rws.cli.options import (
    ArchOpt,
    CodecOpt,
    CorruptionsOpt,
    CriterionOpt,
    DataOpt,
    DeviceOpt,
    EpsOpt,
    OutputOpt,
    PlotOpt,
    SeedOpt,
    choice,
    parse_corruptions,
)
from rws.cli.render import alpha_table, mrc_table
from rws.data import ImageDataset, load_dataset
from rws.errors import OutputPathError, UsageError
from rws.io.atomic import write_atomic
from rws.io.figures import save_figure
from rws.io.output_paths import check_output_paths
from rws.models import load_model
from rws.recipes.alpha import DEFAULT_REFINE, AlphaSettings
from rws.recipes.criticality import MrcSettings, mrc
from rws.recipes.plots import plot_alpha_curve, plot_mrc
from rws.recipes.rift import RIFT_RECIPES, rift, rift_recipe, rift_train_config

AtWeightsOpt = Annotated[str, typer.Option(help="The adversarially trained checkpoint.")]
RecipeOpt = Annotated[
    str,
    choice(
        help="rws (training split, weight+bias+BN trained, rest in eval mode, no augmentation) or "
        "reference (the RiFT code's choices; README: RiFT recipes).",
        kind="RiFT recipe",
        names=list(RIFT_RECIPES),
    ),
]
MrcBatchOpt = Annotated[
    int | None,
    typer.Option(help="Examples per ascent step (default: the recipe's, 128 rws, 512 reference)."),
]


def _mrc_settings(recipe: str, batch_size: int | None, **kw: object) -> MrcSettings:
    """The recipe's MRC settings with the options given on the command line."""
    base = rift_recipe(recipe).mrc
    return dataclasses.replace(
        base, batch_size=base.batch_size if batch_size is None else batch_size, **kw
    )


def _check_outputs(outputs: list[Path | None], inputs: list[str]) -> None:
    check_output_paths({f"output {i + 1}": o for i, o in enumerate(outputs)}, inputs)
    for o in outputs:
        if o is not None and not os.path.isdir(os.path.dirname(os.path.abspath(o))):
            raise OutputPathError(o, "its folder does not exist")


def _load(arch: str, weights: str, data: str) -> tuple[nn.Module, ImageDataset]:
    """The model and its dataset, as :func:`mrc` and :func:`rift` take them."""
    dataset = load_dataset(data)
    return load_model(arch, weights, dataset.num_classes), dataset


def mrc_command(
    arch: ArchOpt,
    weights: AtWeightsOpt,
    data: DataOpt = "digits",
    eps_ratio: Annotated[float, typer.Option(help="Weight-ball radius as a share of ‖W‖.")] = 0.1,
    passes: Annotated[int, typer.Option(help="Ascent passes over the adversarial set.")] = 10,
    lr: Annotated[float, typer.Option(help="Ascent step per batch.")] = 1.0,
    eps: EpsOpt = "8/255",
    steps: Annotated[int, typer.Option(help="PGD iterations building the adversarial set.")] = 10,
    n_examples: Annotated[
        int | None, typer.Option(help="First N examples of the recipe's split (default all).")
    ] = None,
    batch_size: MrcBatchOpt = None,
    recipe: RecipeOpt = "rws",
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the table as JSON.")
    ] = None,
    plot: PlotOpt = None,
) -> None:
    """Module robust criticality of every conv/linear module (RiFT step 1); --plot: bar chart.

    Example: rws mrc --arch small-cnn --weights at.safetensors --data digits --plot mrc.png
    """
    settings = _mrc_settings(recipe, batch_size, eps_ratio=eps_ratio, passes=passes, lr=lr,
                             attack_eps=eps, attack_steps=steps, n_examples=n_examples,
                             seed=seed)  # fmt: skip
    _check_outputs([json_out, plot], [weights])
    res = mrc(*_load(arch, weights, data), settings=settings, device=device, progress=True)
    out.print(mrc_table(res))
    out.print(
        f"{res.n_examples} PGD-{steps} examples (ε={eps}): loss {res.base_loss:.4f}, robust "
        f"accuracy {res.base_robust_acc:.4f}; least critical: {res.least_critical.module}; "
        f"{res.seconds:.1f} s",
        markup=False,
        soft_wrap=True,
    )
    if json_out is not None:
        write_atomic(json_out, res.to_json() + "\n")
        out.print(f"wrote {json_out}", markup=False)
    if plot is not None:
        modules = [m.module for m in res.modules]
        fig = plot_mrc(modules, [m.mrc for m in res.modules], res.least_critical.module)
        save_figure(fig, plot)
        out.print(f"wrote {plot}", markup=False)


def _grid(text: str) -> tuple[float, ...]:
    """``--grid 0.5,1`` → (0.5, 1.0); a bad entry is a one-line usage error."""
    try:
        return tuple(float(a) for a in text.split(",") if a.strip())
    except ValueError:
        raise UsageError(f"--grid must be numbers separated by commas, got {text!r}") from None


def rift_command(
    arch: ArchOpt,
    weights: AtWeightsOpt,
    output: OutputOpt,
    data: DataOpt = "digits",
    module: Annotated[
        str | None, typer.Option(help="Fine-tune this module instead of the least critical.")
    ] = None,
    codec: CodecOpt = "fp32",
    epochs: Annotated[int, typer.Option(help="Fine-tuning epochs (lr ×0.1 at half).")] = 10,
    lr: Annotated[float, typer.Option(help="Fine-tuning learning rate (SGD).")] = 1e-3,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 128,
    criterion: CriterionOpt = "clean",
    max_robust_drop: Annotated[
        float, typer.Option(help="Largest PGD-accuracy fall allowed, in accuracy points.")
    ] = 0.1,
    corruptions: CorruptionsOpt = "all",
    eps: EpsOpt = "8/255",
    steps: Annotated[int, typer.Option(help="PGD iterations (MRC set and α search).")] = 10,
    eps_ratio: Annotated[float, typer.Option(help="MRC weight-ball radius / ‖W‖.")] = 0.1,
    passes: Annotated[int, typer.Option(help="MRC ascent passes.")] = 10,
    n_examples: Annotated[
        int | None, typer.Option(help="MRC: first N examples of the recipe's split (default all).")
    ] = None,
    recipe: RecipeOpt = "rws",
    grid: Annotated[
        str,
        typer.Option(help="α values the search measures, comma-separated (0 is always added)."),
    ] = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1",
    refine: Annotated[
        float, typer.Option(help="Step of the refinement around the grid's choice (0: none).")
    ] = DEFAULT_REFINE,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    work_dir: Annotated[
        Path | None, typer.Option(help="Keep MRC and fine-tuning checkpoints here; rerun resumes.")
    ] = None,
    plot: PlotOpt = None,
    name: Annotated[str, typer.Option(help="Patch name (default rift-<module>).")] = "",
) -> None:
    """RiFT: MRC → fine-tune the least critical module on clean data → choose α → patch.

    --corruptions is the corrupted validation copy the α rule measures; --plot draws the α curve.

    Example: rws rift --arch small-cnn --weights at.safetensors --data digits -o rift.safetensors
    """
    rec = rift_recipe(recipe)
    ms = _mrc_settings(recipe, None, eps_ratio=eps_ratio, passes=passes, attack_eps=eps,
                       attack_steps=steps, n_examples=n_examples, seed=seed)  # fmt: skip
    alpha = AlphaSettings(grid=_grid(grid), refine=refine, criterion=criterion,
                          max_robust_drop=max_robust_drop,
                          corruptions=parse_corruptions(corruptions), attack_eps=ms.attack_eps,
                          attack_steps=steps, seed=seed, copy="cycled",
                          attack_step_size=ms.attack_step_size, attack_runs=rec.attack_runs)  # fmt: skip
    cfg = rift_train_config(**{**rec.train, "epochs": epochs, "lr": lr, "batch_size": batch_size,
                               "seed": seed})  # fmt: skip
    _check_outputs([output, plot], [weights])
    res = rift(*_load(arch, weights, data), recipe=recipe, module=module, mrc_settings=ms,
               train_config=cfg, alpha_settings=alpha, codec=codec, work_dir=work_dir,
               device=device, name=name, source=weights, progress=True)  # fmt: skip
    res.patch.save(output)
    out.print(mrc_table(res.mrc))
    out.print(alpha_table(res.curve))
    base, best = res.curve.base, res.curve.chosen
    out.print(
        f"wrote {output}: {recipe} recipe, module {res.module}, α = {best.alpha:g}; validation clean "
        f"{100 * base.clean:.2f} → {100 * best.clean:.2f}, robust {100 * base.robust:.2f} → "
        f"{100 * best.robust:.2f}",
        markup=False,
        soft_wrap=True,
    )
    if plot is not None:
        save_figure(plot_alpha_curve(res.curve, title=f"RiFT on {res.module}"), plot)
        out.print(f"wrote {plot}", markup=False)
