"""Fine-tuning on data corrupted on the fly: the training loop (resumable, deterministic).

Every batch is corrupted by the batched kernels of :mod:`rws.robustness.corruptions`, with a
corruption and a severity drawn per batch from one seeded ``torch.Generator``
(:func:`rws.robustness.inputs.random_corruption`), which also shuffles and seeds dropout (inside a
forked RNG, so the global RNGs are left as they were). A checkpoint (:mod:`rws.training.state`) is
written atomically after every epoch, and a run resumed from it ends bit-identical, on the CPU, to
one that was never interrupted. (Bit-identical runs need the same number of intra-op threads:
float reductions are summed in another order with more threads.)
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rws.data.types import ImageDataset, Split
from rws.errors import CheckpointError, OutputPathError, UsageError
from rws.io.hashing import state_sha256
from rws.robustness.inputs import corrupted_inputs, random_corruption
from rws.runtime.device import on_device, resolve_device
from rws.runtime.progress import progress_bar
from rws.runtime.seed import forked_rng, generator
from rws.training.augment import random_crop, random_flip
from rws.training.config import EpochStats, TrainConfig, TrainResult
from rws.training.freeze import frozen_except, train_mode
from rws.training.metrics import accuracy, adversarial, robust_accuracy
from rws.training.state import (
    STATE_FILE,
    TrainState,
    check_resume,
    data_fingerprint,
    load_train_state,
    save_train_state,
)

logger = logging.getLogger(__name__)

__all__ = ["finetune"]


def _val_inputs(split: Split, config: TrainConfig) -> torch.Tensor:
    """The validation images corrupted like training, fixed for the run's seed."""
    return corrupted_inputs(split.x, config.corruptions, config.severity, seed=config.seed,
                            batch_size=max(config.batch_size, 256), draws="train")  # fmt: skip


def _make_optimizer(model: nn.Module, c: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if c.optimizer == "adam":
        return torch.optim.Adam(
            params, lr=c.lr, betas=(c.momentum, 0.999), weight_decay=c.weight_decay
        )
    return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)


def _train_epoch(
    model: nn.Module, split: Split, c: TrainConfig, opt: torch.optim.Optimizer,
    g: torch.Generator, dev: torch.device, advance: Callable[[], None],
) -> tuple[float, float]:  # fmt: skip
    train_mode(model, c.trainable, others=c.frozen_mode)
    perm = torch.randperm(len(split), generator=g)
    seed = int(torch.randint(2**62, (1,), generator=g))
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    correct = torch.zeros((), dtype=torch.int64, device=dev)
    seen = 0
    with forked_rng(dev, seed):
        for a in range(0, len(perm), c.batch_size):
            idx = perm[a : a + c.batch_size]
            if len(idx) < 2 and seen:  # a last batch of one would break BatchNorm
                break
            x, y = split.x[idx].to(dev), split.y[idx].to(dev)
            if c.corruptions:
                x = random_corruption(x, c.corruptions, c.severity, g)
            x = random_crop(x, c.crop_padding, g, fill=c.crop_fill)
            if c.flip:
                x = random_flip(x, g)
            if c.attack:
                x = adversarial(model, x, y, c, g)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach().double() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
            advance()
    return float(loss_sum) / seen, int(correct) / seen


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def finetune(
    model: nn.Module,
    data: ImageDataset,
    config: TrainConfig,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool = False,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> TrainResult:
    """Fine-tune ``model`` in place on ``data.train``, corrupted on the fly as ``config`` says.

    With ``config.attack="pgd"`` this is PGD adversarial training (``rws advtrain``); with
    ``config.trainable`` only those modules learn (RiFT's module fine-tuning).

    Args:
        model: the starting point (an origin, a clean model, or a fresh initialisation).
        data: training and validation splits (images in [0, 1]).
        config: optimiser, schedule, corruptions, severity range, seed, device.
        checkpoint_dir: folder for ``train_state.safetensors``, rewritten atomically after every
            epoch; if it already holds one from the same run, training continues from it (the
            same config, except that ``epochs`` may grow when the completed epochs' learning
            rates stay the same, and ``device``), with the same initial weights and data.
        progress: a rich progress bar on stderr, one per epoch (closed before ``on_epoch``).
        on_epoch: called with each finished epoch's statistics, as soon as it ends (a resumed
            run's earlier epochs first).

    Returns:
        The final model (eval mode, on its original device) with per-epoch statistics.

    Raises:
        UsageError: a checkpoint folder holding another config, or a bad device.
        IntegrityError: a checkpoint folder started from other initial weights or data.
        CheckpointError: an unreadable checkpoint, or one that does not fit ``model``.

    Example:
        >>> cfg = TrainConfig(epochs=3, lr=3e-3, optimizer="adam", batch_size=32,
        ...                   corruptions=("fog",), severity=(3, 5), seed=0)
        >>> result = finetune(model, load_digits(), cfg)  # doctest: +SKIP
    """
    if len(data.train) == 0:
        raise UsageError(f"dataset {data.name!r} has no training images")
    dev = resolve_device(config.device)
    with frozen_except(model, config.trainable), on_device(model, dev):
        res = _finetune(model, data, config, dev, checkpoint_dir, progress, on_epoch)
    res.model.eval()
    return res


def _resume(
    model: nn.Module, opt: torch.optim.Optimizer, g: torch.Generator, config: TrainConfig,
    path: Path, info: dict[str, Any],
) -> tuple[list[EpochStats], dict[str, torch.Tensor] | None]:  # fmt: skip
    """Load the checkpoint at ``path`` into the model, optimizer and generator; its history and
    best weights."""
    st = load_train_state(path)
    check_resume(st, path, config, info)
    try:
        model.load_state_dict(st.model)
        opt.load_state_dict(st.optimizer)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(path, f"does not fit the model ({exc})") from None
    g.set_state(st.generator)
    logger.info("resuming from %s after epoch %d", path, st.epoch)
    return [EpochStats(**h) for h in st.info["history"]], st.best


def _finetune(
    model: nn.Module,
    data: ImageDataset,
    config: TrainConfig,
    dev: torch.device,
    checkpoint_dir: str | os.PathLike | None,
    progress: bool,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> TrainResult:
    opt = _make_optimizer(model, config)
    g = generator(config.seed)
    history: list[EpochStats] = []
    best_state: dict[str, torch.Tensor] | None = None
    state_path: Path | None = None
    info: dict[str, Any] = {}
    if checkpoint_dir is not None:
        folder = Path(checkpoint_dir)
        if folder.exists() and not folder.is_dir():
            raise OutputPathError(folder, "is a file; give a folder for the training checkpoints")
        folder.mkdir(parents=True, exist_ok=True)
        state_path = folder / STATE_FILE
        info = {"config": config.to_dict(), "init_sha256": state_sha256(model.state_dict()),
                "data": data_fingerprint(data)}  # fmt: skip
        if state_path.exists():
            history, best_state = _resume(model, opt, g, config, state_path, info)
    resumed = len(history)
    if on_epoch is not None:
        for h in history:  # a resumed run's earlier epochs
            on_epoch(h)
    val_x = _val_inputs(data.val, config)
    n_batches = math.ceil(len(data.train) / config.batch_size)
    bs = max(config.batch_size, 256)
    for epoch in range(resumed, config.epochs):
        desc = f"epoch {epoch + 1}/{config.epochs}"
        with progress_bar(desc, n_batches, enabled=progress) as advance:
            start = time.perf_counter()
            lr = config.lr_at(epoch)
            for group in opt.param_groups:
                group["lr"] = lr
            loss, acc = _train_epoch(model, data.train, config, opt, g, dev, advance)
            val_clean = accuracy(model, data.val.x, data.val.y, bs, dev)
            if config.attack:
                val = robust_accuracy(model, val_x, data.val.y, config, bs, dev)
            elif config.corruptions:
                val = accuracy(model, val_x, data.val.y, bs, dev)
            else:
                val = val_clean
            if config.keep_best and (best_state is None or val > max(h.val_acc for h in history)):
                best_state = _snapshot(model)
            history.append(
                EpochStats(epoch + 1, lr, loss, acc, val, val_clean, time.perf_counter() - start)
            )
            logger.info(
                "epoch %d: loss %.4f, train acc %.4f, val acc %.4f", epoch + 1, loss, acc, val
            )
            if state_path is not None:
                extra = {**info, "history": [h.to_dict() for h in history]}
                state = TrainState(model.state_dict(), opt.state_dict(), g.get_state(), epoch + 1,
                                   extra, best_state)  # fmt: skip
                save_train_state(state_path, state)
        if on_epoch is not None:  # after the bar is gone: the row lands on stdout, not under it
            on_epoch(history[-1])
    best = max(history, key=lambda h: -1.0 if math.isnan(h.val_acc) else h.val_acc)
    if config.keep_best and best_state is not None:
        model.load_state_dict(best_state)
    return TrainResult(model, config, history, best.epoch, resumed)
