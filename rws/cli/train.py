"""``rws finetune`` and ``rws advtrain``: one training run each, written with its provenance."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rws.cli.console import err, out
from rws.cli.options import (
    ArchOpt,
    BatchOpt,
    CheckpointDirOpt,
    CorruptionsOpt,
    DataOpt,
    DecayOpt,
    DeviceOpt,
    EpochsOpt,
    EpsOpt,
    LrOpt,
    MomentumOpt,
    OptimizerOpt,
    OutputOpt,
    ScheduleOpt,
    SeedOpt,
    SeverityOpt,
    StartWeightsOpt,
    choice,
    parse_corruptions,
)
from rws.cli.render import EpochRows
from rws.data.severity import parse_severity
from rws.robustness.attacks import parse_eps
from rws.training.config import TrainConfig, TrainResult
from rws.training.runs import train_to_file

KeepOpt = Annotated[
    str,
    choice(
        help="Weights to keep: best (the best validation PGD accuracy) or last epoch.",
        kind="keep mode",
        names=("best", "last"),
    ),
]

CropOpt = Annotated[
    int,
    typer.Option(
        "--crop-padding",
        min=0,
        help="Random-crop augmentation: pad each training image by this many pixels and crop back "
        "at a random offset (the reference recipes use 4); 0 = none. No flips: digits are not "
        "mirror-symmetric.",
    ),
]


def _train(
    arch: str, data: str, weights: str | None, config: TrainConfig, output: Path,
    checkpoint_dir: Path | None,
) -> TrainResult:  # fmt: skip
    """Train to ``output``, one row printed per finished epoch."""
    res = train_to_file(arch, data, weights, config, output, checkpoint_dir=checkpoint_dir,
                        progress=True, on_epoch=EpochRows(out, config))  # fmt: skip
    if res.resumed_epochs:
        err.print(f"resumed after epoch {res.resumed_epochs} from {checkpoint_dir}")
    return res


def finetune_command(
    arch: ArchOpt,
    corruption: CorruptionsOpt,
    output: OutputOpt,
    weights: StartWeightsOpt = None,
    data: DataOpt = "digits",
    severity: SeverityOpt = "5",
    epochs: EpochsOpt = 50,
    lr: LrOpt = 0.01,
    momentum: MomentumOpt = 0.9,
    weight_decay: DecayOpt = 5e-4,
    batch_size: BatchOpt = 128,
    optimizer: OptimizerOpt = "sgd",
    schedule: ScheduleOpt = "step",
    crop_padding: CropOpt = 0,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    checkpoint_dir: CheckpointDirOpt = None,
) -> None:
    """Fine-tune on data corrupted on the fly (defaults: the RWS reference's SGD recipe).

    Example: rws finetune --arch small-cnn --weights clean.safetensors --corruption fog -o fog.safetensors

    Clean origin: rws finetune --arch small-cnn --corruption none --epochs 10 -o clean.safetensors
    """
    config = TrainConfig(
        epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay, batch_size=batch_size,
        optimizer=optimizer, schedule=schedule, seed=seed,  # type: ignore[arg-type]
        corruptions=parse_corruptions(corruption, option="--corruption"),
        severity=parse_severity(severity), device=device, crop_padding=crop_padding,
    )  # fmt: skip
    res = _train(arch, data, weights, config, output, checkpoint_dir)
    f, (lo, hi) = res.final, config.severity
    if config.corruptions:
        sev = f"severity {lo}" if lo == hi else f"severity {lo}–{hi}"
        what = f"{', '.join(config.corruptions)}, {sev}"
        accs = f"clean {f.val_clean_acc:.4f}, corrupted {f.val_acc:.4f}"
    else:
        what, accs = "clean", f"{f.val_clean_acc:.4f}"
    out.print(
        f"wrote {output}: {arch} on {data} ({what}); final val accuracy {accs}; "
        f"best epoch {res.best_epoch}",
        markup=False,
        soft_wrap=True,
    )


def advtrain_command(
    arch: ArchOpt,
    output: OutputOpt,
    data: DataOpt = "digits",
    weights: StartWeightsOpt = None,
    epochs: EpochsOpt = 10,
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
    keep: KeepOpt = "best",
    crop_padding: CropOpt = 0,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    checkpoint_dir: CheckpointDirOpt = None,
) -> None:
    """PGD adversarial training (Madry et al.): the AT model RiFT starts from.

    Example: rws advtrain --arch small-cnn --data digits --epochs 10 -o at.safetensors
    """
    config = TrainConfig(
        epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay, batch_size=batch_size,
        optimizer=optimizer, schedule=schedule, seed=seed, device=device,  # type: ignore[arg-type]
        attack="pgd", eps=parse_eps(eps), attack_steps=steps,
        attack_step_size=parse_eps(step_size) if step_size else None, keep_best=keep == "best",
        crop_padding=crop_padding,
    )  # fmt: skip
    res = _train(arch, data, weights, config, output, checkpoint_dir)
    kept = next(h for h in res.history if h.epoch == (res.best_epoch if keep == "best" else epochs))
    out.print(
        f"wrote {output}: {arch} adversarially trained on {data} (PGD-{steps}, ε={eps}); epoch "
        f"{kept.epoch}: val accuracy clean {kept.val_clean_acc:.4f}, PGD {kept.val_acc:.4f}",
        markup=False,
        soft_wrap=True,
    )
