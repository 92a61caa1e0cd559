"""``rws advtrain``, ``rws mrc``, ``rws rift``: parse, call the library, render.

Registered by ``rws/cli.py``; errors reach its one error boundary (``RwsError`` → ``error: …``
and the class's exit code).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from rws.cli.eval import DeviceOpt
from rws.cli.train import (
    BatchOpt,
    CheckpointDirOpt,
    DecayOpt,
    LrOpt,
    MomentumOpt,
    OptimizerOpt,
    ScheduleOpt,
)
from rws.errors import OutputPathError

ArchOpt = Annotated[str, typer.Option(help="Registered model, module.path:factory or timm:NAME.")]
DataOpt = Annotated[str, typer.Option(help="digits, cifar10:DIR, cifar100:DIR or folder:DIR.")]
EpsOpt = Annotated[str, typer.Option(help="L∞ attack radius, e.g. 8/255.")]
SeedOpt = Annotated[int, typer.Option(help="Seed of initialisation, shuffling and attacks.")]


def _check_outputs(outputs: list[Path | None], inputs: list[str]) -> None:
    from rws.io.checkpoint import check_output_path

    for o in outputs:
        if o is None:
            continue
        check_output_path(o, inputs)
        if not os.path.isdir(os.path.dirname(os.path.abspath(o))):
            raise OutputPathError(o, "its folder does not exist")


def advtrain_command(
    arch: ArchOpt,
    output: Annotated[Path, typer.Option("--output", "-o", help="Final weights (.safetensors).")],
    data: DataOpt = "digits",
    weights: Annotated[
        str | None, typer.Option(help="Starting checkpoint; without it, the seeded init.")
    ] = None,
    epochs: Annotated[int, typer.Option(help="Passes over the training split.")] = 10,
    eps: EpsOpt = "8/255",
    steps: Annotated[int, typer.Option(help="PGD iterations per batch.")] = 10,
    step_size: Annotated[
        str | None, typer.Option(help="PGD step (default 2.5·eps/steps, 2/255 at 8/255).")
    ] = None,
    lr: LrOpt = 0.1,
    momentum: MomentumOpt = 0.9,
    weight_decay: DecayOpt = 5e-4,
    batch_size: BatchOpt = 128,
    optimizer: OptimizerOpt = "sgd",
    schedule: ScheduleOpt = "step",
    keep: Annotated[
        str, typer.Option(help="best (epoch with the best validation PGD accuracy) or last.")
    ] = "best",
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    checkpoint_dir: CheckpointDirOpt = None,
) -> None:
    """PGD adversarial training (Madry et al.): the AT model RiFT starts from.

    Example: rws advtrain --arch small-cnn --data digits --epochs 10 -o at.safetensors
    """
    from rws.cli.app import out as stdout
    from rws.cli.train import train_and_save
    from rws.errors import UsageError
    from rws.robustness.attacks import parse_eps
    from rws.training.train import TrainConfig

    if keep not in ("best", "last"):
        raise UsageError(f"--keep {keep!r}: choose best or last")
    config = TrainConfig(
        epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay, batch_size=batch_size,
        optimizer=optimizer, schedule=schedule, seed=seed, device=device,  # type: ignore[arg-type]
        attack="pgd", eps=parse_eps(eps), attack_steps=steps,
        attack_step_size=parse_eps(step_size) if step_size else None, keep_best=keep == "best",
    )  # fmt: skip
    res = train_and_save(arch, data, weights, config, output, checkpoint_dir)
    kept = next(h for h in res.history if h.epoch == (res.best_epoch if keep == "best" else epochs))
    stdout.print(
        f"wrote {output}: {arch} adversarially trained on {data} (PGD-{steps}, ε={eps}); epoch "
        f"{kept.epoch}: val accuracy clean {kept.val_clean_acc:.4f}, PGD {kept.val_acc:.4f}",
        markup=False,
        soft_wrap=True,
    )


def _mrc_table(res: Any) -> Any:
    from rich.table import Table

    least = res.least_critical.module
    t = Table("module", "‖W‖", "MRC", "adv. loss", "robust acc", "drop (pt)")
    for m in res.modules:
        t.add_row(m.module, f"{m.weight_l2:.3g}", f"{m.mrc:.4f}", f"{m.loss:.4f}",
                  f"{m.robust_acc:.4f}", f"{100 * m.robust_drop:.2f}",
                  style="bold" if m.module == least else None)  # fmt: skip
    return t


def _mrc_settings(**kw: Any) -> Any:
    from rws.recipes.criticality import MrcSettings
    from rws.robustness.attacks import parse_eps

    kw["attack_eps"] = parse_eps(kw["attack_eps"])
    return MrcSettings(**kw)


def mrc_command(
    arch: ArchOpt,
    weights: Annotated[str, typer.Option(help="The adversarially trained checkpoint.")],
    data: DataOpt = "digits",
    eps_ratio: Annotated[float, typer.Option(help="Weight-ball radius as a share of ‖W‖.")] = 0.1,
    passes: Annotated[int, typer.Option(help="Ascent passes over the adversarial set.")] = 10,
    lr: Annotated[float, typer.Option(help="Ascent step per batch.")] = 1.0,
    eps: EpsOpt = "8/255",
    steps: Annotated[int, typer.Option(help="PGD iterations building the adversarial set.")] = 10,
    n_examples: Annotated[
        int | None, typer.Option(help="First N training examples (default all).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Examples per ascent step.")] = 128,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the table as JSON.")
    ] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Bar chart (PNG/SVG/PDF).")] = None,
) -> None:
    """Module robust criticality of every conv/linear module (RiFT step 1).

    Example: rws mrc --arch small-cnn --weights at.safetensors --data digits --plot mrc.png
    """
    from rws.cli.app import out as stdout
    from rws.data import load_dataset
    from rws.io.atomic import write_atomic
    from rws.io.figures import save_figure
    from rws.models import load_model
    from rws.recipes.criticality import mrc
    from rws.recipes.plots import plot_mrc

    settings = _mrc_settings(eps_ratio=eps_ratio, passes=passes, lr=lr, attack_eps=eps,
                             attack_steps=steps, n_examples=n_examples, batch_size=batch_size,
                             seed=seed)  # fmt: skip
    _check_outputs([json_out, plot], [weights])
    dataset = load_dataset(data)
    model = load_model(arch, weights, dataset.num_classes)
    res = mrc(model, dataset, settings=settings, device=device, progress=True)
    stdout.print(_mrc_table(res))
    stdout.print(
        f"{res.n_examples} PGD-{steps} examples (ε={eps}): loss {res.base_loss:.4f}, robust "
        f"accuracy {res.base_robust_acc:.4f}; least critical: {res.least_critical.module}; "
        f"{res.seconds:.1f} s",
        markup=False,
        soft_wrap=True,
    )
    if json_out is not None:
        write_atomic(json_out, res.to_json() + "\n")
        stdout.print(f"wrote {json_out}", markup=False)
    if plot is not None:
        fig = plot_mrc([m.module for m in res.modules], [m.mrc for m in res.modules],
                       res.least_critical.module)  # fmt: skip
        save_figure(fig, plot)
        stdout.print(f"wrote {plot}", markup=False)


def alpha_table(curve: Any) -> Any:
    """A rich table of an α curve, the chosen row in bold."""
    from rich.table import Table

    def pct(v: float) -> str:
        return "–" if math.isnan(v) else f"{100 * v:.2f}"

    t = Table("α", "clean", "corrupted", "robust (PGD)")
    for p in curve.points:
        t.add_row(f"{p.alpha:g}", pct(p.clean), pct(p.corrupted), pct(p.robust),
                  style="bold" if p.alpha == curve.chosen.alpha else None)  # fmt: skip
    return t


def rift_command(
    arch: ArchOpt,
    weights: Annotated[str, typer.Option(help="The adversarially trained checkpoint.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The RiFT patch (.safetensors).")],
    data: DataOpt = "digits",
    module: Annotated[
        str | None, typer.Option(help="Fine-tune this module instead of the least critical.")
    ] = None,
    codec: Annotated[str, typer.Option(help="Delta codec (fp32 keeps it exact).")] = "fp32",
    epochs: Annotated[int, typer.Option(help="Fine-tuning epochs (lr ×0.1 at half).")] = 10,
    lr: Annotated[float, typer.Option(help="Fine-tuning learning rate (SGD).")] = 1e-3,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 128,
    criterion: Annotated[
        str, typer.Option(help="α rule: clean, corrupted, robust or e.g. clean=1,corrupted=1.")
    ] = "clean",
    max_robust_drop: Annotated[
        float, typer.Option(help="Largest PGD-accuracy fall allowed (fraction; 0.001 = 0.1 pt).")
    ] = 0.001,
    corruptions: Annotated[
        str, typer.Option(help="Corrupted validation copy: all, none or fog,snow.")
    ] = "all",
    eps: EpsOpt = "8/255",
    steps: Annotated[int, typer.Option(help="PGD iterations (MRC set and α search).")] = 10,
    eps_ratio: Annotated[float, typer.Option(help="MRC weight-ball radius / ‖W‖.")] = 0.1,
    passes: Annotated[int, typer.Option(help="MRC ascent passes.")] = 10,
    n_examples: Annotated[
        int | None, typer.Option(help="MRC: first N training examples (default all).")
    ] = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    work_dir: Annotated[
        Path | None, typer.Option(help="Keep MRC and fine-tuning checkpoints here; rerun resumes.")
    ] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="α curve plot (PNG/SVG/PDF).")] = None,
    name: Annotated[str, typer.Option(help="Patch name (default rift-<module>).")] = "",
) -> None:
    """RiFT: MRC → fine-tune the least critical module on clean data → choose α → patch.

    Example: rws rift --arch small-cnn --weights at.safetensors --data digits -o rift.safetensors
    """
    from rws.cli.app import out as stdout
    from rws.cli.eval import parse_corruptions
    from rws.data import load_dataset
    from rws.io.figures import save_figure
    from rws.models import load_model
    from rws.recipes.alpha import AlphaSettings
    from rws.recipes.plots import plot_alpha_curve
    from rws.recipes.rift import rift, rift_train_config
    from rws.robustness.corruptions import CORRUPTIONS

    ms = _mrc_settings(eps_ratio=eps_ratio, passes=passes, attack_eps=eps, attack_steps=steps,
                       n_examples=n_examples, seed=seed)  # fmt: skip
    parsed = parse_corruptions(corruptions)
    names = CORRUPTIONS if parsed == "all" else tuple(parsed or ())
    alpha = AlphaSettings(criterion=criterion, max_robust_drop=max_robust_drop, corruptions=names,
                          attack_eps=ms.attack_eps, attack_steps=steps, seed=seed)  # fmt: skip
    cfg = rift_train_config(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)
    _check_outputs([output, plot], [weights])
    dataset = load_dataset(data)
    model = load_model(arch, weights, dataset.num_classes)
    res = rift(model, dataset, module=module, mrc_settings=ms, train_config=cfg,
               alpha_settings=alpha, codec=codec, work_dir=work_dir, device=device, name=name,
               source=weights, progress=True)  # fmt: skip
    res.patch.save(output)
    stdout.print(_mrc_table(res.mrc))
    stdout.print(alpha_table(res.curve))
    base, best = res.curve.base, res.curve.chosen
    stdout.print(
        f"wrote {output}: module {res.module}, α = {best.alpha:g}; validation clean "
        f"{100 * base.clean:.2f} → {100 * best.clean:.2f}, robust {100 * base.robust:.2f} → "
        f"{100 * best.robust:.2f}",
        markup=False,
        soft_wrap=True,
    )
    if plot is not None:
        save_figure(plot_alpha_curve(res.curve, title=f"RiFT on {res.module}"), plot)
        stdout.print(f"wrote {plot}", markup=False)
