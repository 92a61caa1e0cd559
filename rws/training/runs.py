"""Training runs from files: build the model, fine-tune, write the weights with their provenance.

The file-level workflow behind ``rws finetune`` and ``rws advtrain``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from rws.data import load_dataset
from rws.errors import OutputPathError
from rws.io.checkpoint import check_output_path
from rws.models import load_model
from rws.training.config import EpochStats, TrainConfig, TrainResult
from rws.training.loop import finetune
from rws.training.weights import init_model, save_result

__all__ = ["train_to_file"]


def train_to_file(
    arch: str,
    data: str,
    weights: str | os.PathLike | None,
    config: TrainConfig,
    output: str | os.PathLike,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool = False,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> TrainResult:
    """Train ``arch`` on ``data`` and write the weights to ``output`` (atomically).

    Args:
        arch: a registered model, ``module.path:factory`` or ``timm:NAME``.
        data: a dataset spec (``digits``, ``cifar10:DIR`` …).
        weights: the starting checkpoint; None starts from the initialisation seeded by
            ``config.seed``.
        config: the training settings (corruptions, attack, optimiser, schedule, seed …).
        output: the ``.safetensors`` file to write, with the run's provenance in its metadata
            (:func:`rws.training.weights.save_result`).
        checkpoint_dir: checkpoint every epoch here; a rerun resumes.
        progress: a progress bar on stderr.
        on_epoch: called with each finished epoch's statistics (:func:`finetune`).

    Returns:
        The run's result (final model, history, best epoch, resumed epochs).

    Raises:
        OutputPathError: ``output`` is an input, a folder, or in a folder that does not exist
            (checked before any training).

    Example:
        >>> cfg = TrainConfig(epochs=1, corruptions=("fog",))
        >>> res = train_to_file("small-cnn", "digits", None, cfg, "fog.safetensors")  # doctest: +SKIP
    """
    check_output_path(output, [weights] if weights else [])
    if not os.path.isdir(os.path.dirname(os.path.abspath(output))):
        raise OutputPathError(output, "its folder does not exist")
    dataset = load_dataset(data)
    if weights:
        model = load_model(arch, weights, dataset.num_classes)
    else:
        model = init_model(arch, dataset.num_classes, seed=config.seed)
    res = finetune(model, dataset, config, checkpoint_dir=checkpoint_dir, progress=progress,
                   on_epoch=on_epoch)  # fmt: skip
    save_result(output, res, arch=arch, data=dataset, source=weights,
                init_seed=None if weights else config.seed)  # fmt: skip
    return res
