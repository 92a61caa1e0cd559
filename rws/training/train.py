"""Fine-tuning on data corrupted on the fly (resumable, deterministic) and BatchNorm recalibration.

Every batch is corrupted by the batched kernels of :mod:`rws.robustness.corruptions`, with a
corruption and a severity drawn per batch from one seeded ``torch.Generator``, which also shuffles
and seeds dropout (inside a forked RNG, so the global RNGs are left as they were). A checkpoint
(:mod:`rws.training.state`) is written atomically after every epoch, and a run resumed from it ends
bit-identical, on the CPU, to one that was never interrupted. (Bit-identical runs need the same
number of intra-op threads: float reductions are summed in another order with more threads.)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import Progress
from torch import nn

from rws._version import __version__
from rws.data.types import ImageDataset, Split
from rws.errors import CheckpointError, OutputPathError, UsageError
from rws.io.safetensors_io import save_tensors
from rws.models import resolve_model
from rws.robustness.attacks import attack
from rws.robustness.corruptions import corrupt, get_corruption
from rws.runtime.device import resolve_device
from rws.training.state import (
    STATE_FILE,
    EpochStats,
    TrainConfig,
    TrainResult,
    TrainState,
    check_float,
    check_int,
    check_resume,
    data_fingerprint,
    load_train_state,
    save_train_state,
    severity_range,
    state_sha256,
)

logger = logging.getLogger(__name__)

__all__ = [
    "EpochStats",
    "TrainConfig",
    "TrainResult",
    "accuracy",
    "corrupted_inputs",
    "finetune",
    "grad_only",
    "init_model",
    "recalibrate_bn",
    "resolve_device",
    "save_result",
    "severity_range",
]

RESULT_KEY = "rws.finetune"


def init_model(arch: str, num_classes: int, *, seed: int) -> nn.Module:
    """``arch`` with its initialisation drawn from ``seed`` (the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return resolve_model(arch, num_classes=num_classes)


@contextlib.contextmanager
def _forked_rng(dev: torch.device, seed: int) -> Iterator[None]:
    """Seed the global RNGs (dropout) for a block and restore them afterwards."""
    cuda = dev.type == "cuda"
    index = (dev.index if dev.index is not None else torch.cuda.current_device()) if cuda else 0
    with torch.random.fork_rng(devices=[index] if cuda else []):
        torch.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield


def _draw(g: torch.Generator, low: int, high: int) -> int:
    """An integer in [low, high] from ``g`` (nothing drawn when the range has one value)."""
    return low if high == low else int(torch.randint(low, high + 1, (1,), generator=g))


def _corrupt_batch(
    x: torch.Tensor, names: Sequence[str], severity: tuple[int, int], g: torch.Generator
) -> torch.Tensor:
    name = names[_draw(g, 0, len(names) - 1)]
    return corrupt(x, name, _draw(g, *severity), generator=g)


def _derived_seed(seed: int, tag: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{tag}".encode()).digest()[:8], "little") >> 1


def corrupted_inputs(
    x: torch.Tensor, corruptions: Sequence[str], severity: tuple[int, int], *, seed: int,
    batch_size: int = 256,
) -> torch.Tensor:  # fmt: skip
    """A fixed corrupted copy of ``x``: example j gets the j-th (corruption, severity) pair in
    turn, so every pair is represented evenly; the same for a seed."""
    if not corruptions or len(x) == 0:
        return x
    lo, hi = severity
    cells = [(c, s) for c in corruptions for s in range(lo, hi + 1)]
    g = torch.Generator().manual_seed(_derived_seed(seed, "val"))
    out = x.clone()
    for k, (name, sev) in enumerate(cells):
        idx = torch.arange(k, len(x), len(cells))
        for a in range(0, len(idx), batch_size):
            chunk = idx[a : a + batch_size]
            out[chunk] = corrupt(x[chunk], name, sev, generator=g)
    return out


def _val_inputs(split: Split, config: TrainConfig) -> torch.Tensor:
    """The validation images corrupted like training, fixed for the run's seed."""
    return corrupted_inputs(split.x, config.corruptions, config.severity, seed=config.seed,
                            batch_size=max(config.batch_size, 256))  # fmt: skip


@torch.no_grad()
def accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int, dev: torch.device
) -> float:
    """Top-1 accuracy of ``model`` (eval mode, on ``dev``) in batches of ``bs``; NaN if empty."""
    if len(y) == 0:
        return math.nan
    model.eval()
    correct = sum(
        int((model(x[a : a + bs].to(dev)).argmax(1).to(y.device) == y[a : a + bs]).sum())
        for a in range(0, len(y), bs)
    )
    return correct / len(y)


def _make_optimizer(model: nn.Module, c: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if c.optimizer == "adam":
        return torch.optim.Adam(
            params, lr=c.lr, betas=(c.momentum, 0.999), weight_decay=c.weight_decay
        )
    return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)


def _train_epoch(
    model: nn.Module, split: Split, c: TrainConfig, opt: torch.optim.Optimizer,
    g: torch.Generator, dev: torch.device, advance: Any,
) -> tuple[float, float]:  # fmt: skip
    _train_mode(model, c.trainable)
    perm = torch.randperm(len(split), generator=g)
    seed = int(torch.randint(2**62, (1,), generator=g))
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    correct = torch.zeros((), dtype=torch.int64, device=dev)
    seen = 0
    with _forked_rng(dev, seed):
        for a in range(0, len(perm), c.batch_size):
            idx = perm[a : a + c.batch_size]
            if len(idx) < 2 and seen:  # a last batch of one would break BatchNorm
                break
            x, y = split.x[idx].to(dev), split.y[idx].to(dev)
            if c.corruptions:
                x = _corrupt_batch(x, c.corruptions, c.severity, g)
            if c.attack:
                x = _adversarial(model, x, y, c, g)
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


def _adversarial(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, c: TrainConfig, g: torch.Generator,
    batch_size: int | None = None,
) -> torch.Tensor:  # fmt: skip
    """L∞ PGD examples against ``model`` (in eval mode; its modes are restored afterwards)."""
    return attack(model, x, y, c.attack, eps=c.eps, steps=c.attack_steps,
                  step_size=c.step_size, generator=g, batch_size=batch_size)  # fmt: skip


def _train_mode(model: nn.Module, trainable: Sequence[str]) -> None:
    """Train mode for the whole model, or only for the ``trainable`` modules (and their children)."""
    if not trainable:
        model.train()
        return
    model.eval()
    modules = dict(model.named_modules())
    for name in trainable:
        modules[name].train()


@contextlib.contextmanager
def _frozen_except(model: nn.Module, trainable: Sequence[str]) -> Iterator[None]:
    """Freeze every parameter outside the ``trainable`` modules; restore ``requires_grad`` after."""
    if not trainable:
        yield
        return
    modules = dict(model.named_modules())
    unknown = [n for n in trainable if n not in modules or n == ""]
    if unknown:
        layers = [n for n, m in modules.items() if n and not list(m.children())]
        raise UsageError(
            f"trainable module(s) {', '.join(map(repr, unknown))} not in the model; it has e.g. "
            f"{', '.join(layers[:6])}"
        )
    prefixes = tuple(n + "." for n in trainable)
    with grad_only(model, lambda name, _: name.startswith(prefixes)):
        if not any(p.requires_grad for p in model.parameters()):
            raise UsageError(f"trainable module(s) {', '.join(trainable)} have no parameters")
        yield


@contextlib.contextmanager
def grad_only(model: nn.Module, keep: Callable[[str, nn.Parameter], bool]) -> Iterator[None]:
    """``requires_grad`` only on the parameters ``keep(name, p)`` selects; restored afterwards."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for name, p in model.named_parameters():
            p.requires_grad_(keep(name, p))
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def _robust_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, c: TrainConfig, bs: int, dev: torch.device
) -> float:
    """Accuracy under the training attack, with random starts fixed for the run's seed."""
    if len(y) == 0:
        return math.nan
    g = torch.Generator().manual_seed(_derived_seed(c.seed, "val-attack"))
    x_adv = _adversarial(model, x.to(dev), y.to(dev), c, g, batch_size=bs)
    return accuracy(model, x_adv, y, bs, dev)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def finetune(
    model: nn.Module,
    data: ImageDataset,
    config: TrainConfig,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool = False,
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
        progress: a rich progress bar on stderr.

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
    home = next(iter(model.parameters()), torch.empty(0)).device
    with _frozen_except(model, config.trainable):
        model.to(dev)
        res = _finetune(model, data, config, dev, checkpoint_dir, progress)
    res.model.to(home).eval()
    return res


def _finetune(
    model: nn.Module,
    data: ImageDataset,
    config: TrainConfig,
    dev: torch.device,
    checkpoint_dir: str | os.PathLike | None,
    progress: bool,
) -> TrainResult:
    opt = _make_optimizer(model, config)
    g = torch.Generator().manual_seed(config.seed)
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
            st = load_train_state(state_path)
            check_resume(st, state_path, config, info)
            try:
                model.load_state_dict(st.model)
                opt.load_state_dict(st.optimizer)
            except (RuntimeError, ValueError, KeyError) as exc:
                raise CheckpointError(state_path, f"does not fit the model ({exc})") from None
            g.set_state(st.generator)
            best_state = st.best
            history = [EpochStats(**h) for h in st.info["history"]]
            logger.info("resuming from %s after epoch %d", state_path, st.epoch)
    resumed = len(history)
    val_x = _val_inputs(data.val, config)
    n_batches = math.ceil(len(data.train) / config.batch_size)
    with Progress(console=Console(stderr=True), transient=True, disable=not progress) as bar:
        task = bar.add_task("fine-tuning", total=(config.epochs - resumed) * n_batches)
        for epoch in range(resumed, config.epochs):
            start = time.perf_counter()
            lr = config.lr_at(epoch)
            for group in opt.param_groups:
                group["lr"] = lr
            bar.update(task, description=f"epoch {epoch + 1}/{config.epochs}")
            loss, acc = _train_epoch(model, data.train, config, opt, g, dev,
                                     lambda: bar.advance(task))  # fmt: skip
            bs = max(config.batch_size, 256)
            val_clean = accuracy(model, data.val.x, data.val.y, bs, dev)
            if config.attack:
                val = _robust_accuracy(model, val_x, data.val.y, config, bs, dev)
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
                save_train_state(
                    state_path,
                    TrainState(
                        model.state_dict(),
                        opt.state_dict(),
                        g.get_state(),
                        epoch + 1,
                        extra,
                        best_state,
                    ),
                )
    best = max(history, key=lambda h: -1.0 if math.isnan(h.val_acc) else h.val_acc)
    if config.keep_best and best_state is not None:
        model.load_state_dict(best_state)
    return TrainResult(model, config, history, best.epoch, resumed)


def save_result(
    path: str | os.PathLike,
    result: TrainResult,
    *,
    arch: str,
    data: ImageDataset,
    source: str | os.PathLike | None = None,
    init_seed: int | None = None,
) -> dict[str, Any]:
    """Write the fine-tuned weights as safetensors (atomically) with their provenance.

    The metadata key ``rws.finetune`` holds JSON: tool version, ``arch``, ``data`` (the dataset's
    name), ``num_classes``, ``corruptions``, ``severity``, ``epochs``, ``seed``, ``source``
    (``{"path", "sha256"}`` of the starting checkpoint, or None), ``init_seed`` (the
    :func:`init_model` seed when there was no source), the config, the best epoch and the
    history, without wall times or resumption, so that the same run (same thread count) writes
    a byte-identical file, interrupted or not.

    Returns:
        The metadata written.
    """
    from rws.io.checkpoint import file_sha256, input_paths

    src = None
    if source is not None:
        files = sorted(input_paths(source))
        digest = file_sha256(files[0]) if len(files) == 1 else hashlib.sha256(
            "".join(file_sha256(f) for f in files).encode()).hexdigest()  # fmt: skip
        src = {"path": os.fspath(source), "sha256": digest}
    c = result.config
    meta = {
        "tool": f"rws {__version__}", "arch": arch, "data": data.name,
        "num_classes": data.num_classes, "corruptions": list(c.corruptions),
        "severity": list(c.severity), "epochs": c.epochs, "seed": c.seed, "source": src,
        "init_seed": init_seed, **result.to_dict(),
    }  # fmt: skip
    del meta["resumed_epochs"]  # how the run went, not what it made
    for h in meta["history"]:
        del h["seconds"]
    state = {k: v.detach().cpu() for k, v in result.model.state_dict().items()}
    save_tensors(path, state, {RESULT_KEY: json.dumps(meta)})
    return meta


def recalibrate_bn(
    model: nn.Module,
    x: torch.Tensor | Split,
    *,
    corruption: str | Sequence[str] | None = None,
    severity: int | tuple[int, int] | None = None,
    batch_size: int = 128,
    momentum: float | None = None,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Re-estimate BatchNorm running statistics on (optionally corrupted) images; weights untouched.

    Every BatchNorm layer's running mean and variance are reset and re-estimated in train mode
    (the rest of the model in eval mode, so dropout stays off), under ``torch.no_grad``. The
    layers' ``momentum`` and ``num_batches_tracked`` are restored afterwards.

    Args:
        model: the model, recalibrated in place on the device it is on.
        x: images ``(N, 3, H, W)`` in [0, 1] (or a :class:`Split`).
        corruption: one name or several (one drawn per batch); ``None`` uses the clean images.
        severity: a severity or an inclusive range ``(lo, hi)``, drawn per batch; needed with
            ``corruption``.
        batch_size: images per forward pass.
        momentum: BatchNorm momentum during the pass; ``None`` is a cumulative average.
        generator: source of the corruption draws; ``None`` means a generator seeded with 0.

    Returns:
        ``model``, in eval mode.

    Raises:
        UsageError: no images, a bad severity or momentum, a severity without a corruption.
        UnknownNameError: an unknown corruption.

    Example:
        >>> recalibrate_bn(model, data.train.x, corruption="fog", severity=5)  # doctest: +SKIP
    """
    images = x.x if isinstance(x, Split) else x
    names = (corruption,) if isinstance(corruption, str) else tuple(corruption or ())
    for name in names:
        get_corruption(name)
    if names and severity is None:
        raise UsageError("recalibrate_bn: give the severity of the corruption")
    if severity is not None and not names:
        raise UsageError("recalibrate_bn: a severity needs a corruption")
    sev = severity_range(severity) if severity is not None else (1, 1)
    check_int("batch_size", batch_size, 1)
    if momentum is not None and not 0.0 < check_float("momentum", momentum, 0.0) <= 1.0:
        raise UsageError(f"momentum must be in (0, 1] or None, got {momentum!r}")
    if len(images) == 0:
        raise UsageError("recalibrate_bn: no images to estimate the statistics on")
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    bns = [m for m in bns if m.track_running_stats]
    model.eval()
    if not bns:
        logger.warning("the model has no BatchNorm running statistics; nothing to recalibrate")
        return model
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    dev = next(iter(model.parameters()), torch.empty(0)).device
    saved = [(m.momentum, {k: b.clone() for k, b in m.named_buffers(recurse=False)}) for m in bns]
    done = False
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = momentum
            m.train()
        with torch.no_grad():
            for a in range(0, len(images), batch_size):
                xb = images[a : a + batch_size].to(dev)
                model(_corrupt_batch(xb, names, sev, g) if names else xb)
        done = True
    finally:
        for m, (mom, buffers) in zip(bns, saved, strict=True):
            m.momentum = mom
            m.eval()
            for k, b in m.named_buffers(recurse=False):
                if not done or k == "num_batches_tracked":
                    b.copy_(buffers[k])
    return model
