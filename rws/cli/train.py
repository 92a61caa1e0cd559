"""``rws finetune``: parse the options, call :func:`rws.training.train.finetune`, write and render the result.

Registered by ``rws/cli.py`` as ``app.command("finetune")(finetune_command)``; errors reach its one
error boundary (``RwsError`` → ``error: …`` and the class's exit code).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from rws.cli.eval import DeviceOpt
from rws.errors import OutputPathError, UsageError

LrOpt = Annotated[float, typer.Option(help="Initial learning rate.")]
MomentumOpt = Annotated[float, typer.Option(help="SGD momentum (Adam's β1).")]
DecayOpt = Annotated[float, typer.Option(help="L2 weight decay.")]
BatchOpt = Annotated[int, typer.Option(help="Images per step.")]
OptimizerOpt = Annotated[str, typer.Option(help="sgd or adam.")]
ScheduleOpt = Annotated[str, typer.Option(help="step (×0.1 at 40% and 80%), cosine or constant.")]
CheckpointDirOpt = Annotated[
    Path | None, typer.Option(help="Checkpoint every epoch here; rerun to resume.")
]


def parse_severity(text: str) -> tuple[int, int]:
    """``"5"`` → ``(5, 5)``; ``"3-5"`` → ``(3, 5)``.

    Raises:
        UsageError: not ``S`` or ``LO-HI`` with 1 ≤ LO ≤ HI ≤ 5.
    """
    lo, sep, hi = text.strip().partition("-")
    try:
        pair = (int(lo), int(hi if sep else lo))
    except ValueError:
        pair = None
    if pair is None or not (1 <= pair[0] <= pair[1] <= 5):
        raise UsageError(f"--severity {text!r}: give a severity 1–5 or a range like 3-5")
    return pair


def parse_train_corruptions(text: str) -> tuple[str, ...]:
    """``"none"`` → ``()``; ``"all"`` → the 15 benchmark corruptions; ``"fog,snow"`` → both."""
    from rws.robustness.corruptions import CORRUPTIONS

    text = text.strip()
    if text == "none":
        return ()
    if text == "all":
        return CORRUPTIONS
    names = tuple(c.strip() for c in text.split(",") if c.strip())
    if not names:
        raise UsageError(f"--corruption {text!r}: give corruption names, all or none")
    return names


def finetune_command(
    arch: Annotated[str, typer.Option(help="Registered model, module.path:factory or timm:NAME.")],
    corruption: Annotated[
        str, typer.Option(help="Corruption(s) to train on: fog or fog,snow; all; none (clean).")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Final weights (.safetensors).")],
    weights: Annotated[
        str | None, typer.Option(help="Starting checkpoint; without it, the seeded init.")
    ] = None,
    data: Annotated[
        str, typer.Option(help="digits, cifar10:DIR, cifar100:DIR or folder:DIR.")
    ] = "digits",
    severity: Annotated[
        str, typer.Option(help="Severity S, or a range LO-HI drawn per batch.")
    ] = "5",
    epochs: Annotated[int, typer.Option(help="Passes over the training split.")] = 50,
    lr: LrOpt = 0.01,
    momentum: MomentumOpt = 0.9,
    weight_decay: DecayOpt = 5e-4,
    batch_size: BatchOpt = 128,
    optimizer: OptimizerOpt = "sgd",
    schedule: ScheduleOpt = "step",
    seed: Annotated[int, typer.Option(help="Seed of init, shuffling and corruptions.")] = 0,
    device: DeviceOpt = "auto",
    checkpoint_dir: CheckpointDirOpt = None,
) -> None:
    """Fine-tune on data corrupted on the fly (defaults: the RWS reference's SGD recipe).

    Example: rws finetune --arch small-cnn --weights clean.safetensors --corruption fog -o fog.safetensors

    Clean origin: rws finetune --arch small-cnn --corruption none --epochs 10 -o clean.safetensors
    """
    from rws.cli.app import out as stdout
    from rws.training.train import TrainConfig

    config = TrainConfig(
        epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay, batch_size=batch_size,
        optimizer=optimizer, schedule=schedule, seed=seed,  # type: ignore[arg-type]
        corruptions=parse_train_corruptions(corruption), severity=parse_severity(severity),
        device=device,
    )  # fmt: skip
    res = train_and_save(arch, data, weights, config, output, checkpoint_dir)
    f, (lo, hi) = res.final, config.severity
    if config.corruptions:
        sev = f"severity {lo}" if lo == hi else f"severity {lo}–{hi}"
        what = f"{', '.join(config.corruptions)}, {sev}"
        accs = f"clean {f.val_clean_acc:.4f}, corrupted {f.val_acc:.4f}"
    else:
        what, accs = "clean", f"{f.val_clean_acc:.4f}"
    stdout.print(
        f"wrote {output}: {arch} on {data} ({what}); final val accuracy {accs}; "
        f"best epoch {res.best_epoch}",
        markup=False,
        soft_wrap=True,
    )


def train_and_save(
    arch: str, data: str, weights: str | None, config: Any, output: Path,
    checkpoint_dir: Path | None,
) -> Any:  # fmt: skip
    """Check the output, build the model (from ``weights`` or the seeded init), train, write the
    result with its provenance, render the epochs; the shared body of finetune and advtrain."""
    from rws.cli.app import err
    from rws.cli.app import out as stdout
    from rws.data import load_dataset
    from rws.io.checkpoint import check_output_path
    from rws.models import load_model
    from rws.training.train import finetune, init_model, save_result

    check_output_path(output, [weights] if weights else [])
    if not os.path.isdir(os.path.dirname(os.path.abspath(output))):
        raise OutputPathError(output, "its folder does not exist")
    dataset = load_dataset(data)
    if weights:
        model = load_model(arch, weights, dataset.num_classes)
    else:
        model = init_model(arch, dataset.num_classes, seed=config.seed)
    res = finetune(model, dataset, config, checkpoint_dir=checkpoint_dir, progress=True)
    save_result(output, res, arch=arch, data=dataset, source=weights,
                init_seed=None if weights else config.seed)  # fmt: skip
    _render(stdout, res)
    if res.resumed_epochs:
        err.print(f"resumed after epoch {res.resumed_epochs} from {checkpoint_dir}", markup=False)
    return res


def _render(console: Any, res: Any) -> None:
    from rich.table import Table

    corrupted = bool(res.config.corruptions or res.config.attack)
    extra = "val acc (PGD)" if res.config.attack else "val acc (corrupted)"
    cols = ["epoch", "lr", "train loss", "train acc", "val acc (clean)"]
    t = Table(*cols, *([extra] if corrupted else []), "time (s)")
    for h in res.history:
        row = [str(h.epoch), f"{h.lr:.3g}", f"{h.train_loss:.4f}", f"{h.train_acc:.4f}",
               f"{h.val_clean_acc:.4f}"]  # fmt: skip
        if corrupted:
            row.append(f"{h.val_acc:.4f}")
        t.add_row(*row, f"{h.seconds:.1f}", style="bold" if h.epoch == res.best_epoch else None)
    console.print(t)
