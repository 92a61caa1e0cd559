"""Evaluation of data that does not fit in memory: any iterable of ``(x, y)`` batches.

``rws.evaluate(model, loader, …)`` with a ``DataLoader`` (or any iterable of image/label
batches) comes here. The data is read once: for each batch, every (corruption, severity) cell of
that batch is generated (seeded ``derived_seed(seed, corruption, severity, b)`` for the ``b``-th
batch, truncated to uint8, as the in-memory evaluation does) and every variant (the model, then
each patch applied in place and removed) is run on the clean, corrupted and attacked batch.
Nothing but per-example correctness is kept, so memory is one batch's cells (``batch × cells``
uint8 images), whatever the dataset's size.

With a loader that yields the test images in the same order and batches of the in-memory run's
``batch_size``, the results are exactly those of the in-memory evaluation (tested). Released
corruption arrays (``cifar10c:``, ``imagenet-c:``) are read by the in-memory path only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from rws._version import __version__
from rws.errors import EvaluationError, UsageError
from rws.patching.ops import patched
from rws.patching.patch import Patch
from rws.robustness.attacks import ATTACKS, check_gradient_masking
from rws.robustness.attacks import attack as run_attack
from rws.robustness.config import EvalConfig
from rws.robustness.corruptions import corrupt, kernel_fidelity, resolve_table, table_label
from rws.robustness.inputs import cell_seed, quantize
from rws.robustness.report import Report
from rws.robustness.summary import build_variant, patch_info, unique_name, versus_base
from rws.runtime.device import on_device, resolve_device
from rws.runtime.modes import eval_mode
from rws.runtime.precision import autocast
from rws.runtime.progress import progress_bar
from rws.runtime.seed import derived_seed, generator, generator_device

logger = logging.getLogger(__name__)

PatchArg = Patch | tuple[Patch, float]

__all__ = ["evaluate_stream", "is_batch_stream"]


def is_batch_stream(data: object) -> bool:
    """Whether ``data`` is an iterable of batches (a ``DataLoader``, a generator, a list of
    ``(x, y)`` pairs) rather than a spec, dataset, split or one ``(x, y)`` pair."""
    if isinstance(data, str | bytes | torch.Tensor) or not isinstance(data, Iterable):
        return False
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        return False  # one (x, y) pair
    return not hasattr(data, "test")  # an ImageDataset has splits


def _batches(data: Iterable[Any], limit: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    seen = 0
    for i, item in enumerate(data):
        if not (isinstance(item, Sequence) and len(item) >= 2):
            raise UsageError(f"batch {i} of the data is {type(item).__name__}, not an (x, y) pair")
        x, y = item[0], item[1]
        if not (isinstance(x, torch.Tensor) and x.ndim == 4 and isinstance(y, torch.Tensor)):
            raise UsageError(f"batch {i}: expected images (N, C, H, W) and labels (N,) tensors")
        if x.shape[0] != y.shape[0]:
            raise UsageError(f"batch {i}: {x.shape[0]} images but {y.shape[0]} labels")
        x = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()
        if limit is not None and seen + len(y) > limit:
            x, y = x[: limit - seen], y[: limit - seen]
        if len(y):
            yield x, y.long()
        seen += len(y)
        if limit is not None and seen >= limit:
            return


def evaluate_stream(
    model: nn.Module,
    data: Iterable[Any],
    config: EvalConfig,
    *,
    patches: Sequence[PatchArg] = (),
    progress: bool = False,
    name: str = "<stream>",
) -> Report:
    """Evaluate ``model`` and each patched variant on batches read once from ``data``.

    Args:
        model: the unpatched classifier (images in [0, 1]); restored on return.
        data: an iterable of ``(x, y)`` batches: float images in [0, 1] or uint8, labels.
        config: the settings (``n_examples`` stops early; ``batch_size`` is the loader's).
        patches: each a ``Patch`` or ``(Patch, α)``.
        progress: a progress bar over batches on stderr.
        name: the data's name in the report.

    Raises:
        UsageError: a released corruption source, a baseline, or batches that are not pairs.
        EvaluationError: ``strict`` and a gradient-masking warning.
    """
    if config.corruption_source is not None:
        raise UsageError("released corruption arrays are read by the in-memory evaluation only; "
                         "give the dataset spec instead of a loader")  # fmt: skip
    cfg, dev = config, resolve_device(config.device)
    cells = [(c, s) for c in cfg.corruptions for s in cfg.severities]
    plan: list[tuple[str, list[dict[str, Any]], PatchArg | None]] = [("base", [], None)]
    used = {"base"}
    for item in patches:
        label, info = patch_info(item)
        plan.append((unique_name(label, used), [info], item))
    res: dict[str, dict[str, list[torch.Tensor]]] = {p[0]: {} for p in plan}
    warnings: list[str] = []
    n, shape, first_batch, start = 0, None, None, time.perf_counter()
    total = len(data) if hasattr(data, "__len__") else None  # type: ignore[arg-type]
    place = generator_device(cfg.generator, dev)
    with on_device(model, dev), eval_mode(model), progress_bar(
        f"evaluating {len(plan)} variants (streamed)", total, enabled=progress
    ) as advance:  # fmt: skip
        for b, (x, y) in enumerate(_batches(data, cfg.n_examples)):
            shape, first_batch = shape or tuple(x.shape[1:]), first_batch or len(y)
            x, y = x.to(dev), y.to(dev)
            inputs = {"clean": x}
            for c, s in cells:
                g = generator(cell_seed(cfg.seed, c, s, b), place)
                inputs[f"{c}/{s}"] = quantize(corrupt(x, c, s, params=cfg.params, generator=g))
            for label, _, item in plan:
                ctx = nullcontext() if item is None else patched(
                    model, item, force=cfg.force, clamp_var=cfg.clamp_var)  # fmt: skip
                with ctx:
                    _run_batch(model, inputs, y, b, cfg, place, res[label])
                    if b == 0 and cfg.attack and cfg.check_masking:
                        k = min(cfg.masking_examples, len(y))
                        gm = generator(derived_seed(cfg.seed, "masking"), place)
                        found = check_gradient_masking(model, x[:k], y[:k], norm=cfg.norm,
                                                       generator=gm)  # fmt: skip
                        warnings += [f"{label}: {w}" for w in found]
                        if cfg.strict and found:
                            raise EvaluationError(f"variant {label}: {found[0]}; evaluation "
                                                  "refused (--strict)")  # fmt: skip
            n += len(y)
            advance(1)
    if not n:
        raise UsageError(f"{name}: the data yielded no examples")
    variants = []
    for label, infos, _ in plan:
        per = {k: torch.cat(v).cpu() for k, v in res[label].items()}
        v = build_variant(label, infos, per, cells, cfg.attack)
        if variants:
            v.vs_base = versus_base(variants[0], v, cells, cfg.attack, cfg.seed)
        variants.append(v)
    elapsed = time.perf_counter() - start
    table = resolve_table(cfg.params, *shape[-2:])
    facts = {
        "data": name, "n_examples": n, "test_examples": n, "streamed": True,
        "corruptions": list(cfg.corruptions), "severities": list(cfg.severities),
        "params": cfg.params, "table": table_label(table), "corruption_source": "rws kernels",
        "kernels": {c: kernel_fidelity(c, table) for c in cfg.corruptions},
        "attack": list(cfg.attack), "eps": cfg.eps, "norm": cfg.norm, "batch_size": first_batch,
        "steps": {a: cfg.steps or ATTACKS.entry(a).info.get("steps") for a in cfg.attack},
        "device": dev.type, "seed": cfg.seed, "baseline": None, "baseline_errors": None,
        "generator_device": place.type, "warnings": warnings, "world_size": 1,
        "rws_version": __version__, "torch_version": torch.__version__, "config": cfg.to_dict(),
        "timing": {"elapsed_s": elapsed},
    }  # fmt: skip
    logger.info("evaluated %d variants on %d streamed examples in %.1f s", len(plan), n, elapsed)
    return Report(variants, facts)


def _run_batch(
    model: nn.Module, inputs: dict[str, torch.Tensor], y: torch.Tensor, b: int, cfg: EvalConfig,
    place: torch.device, out: dict[str, list[torch.Tensor]],
) -> None:  # fmt: skip
    """Correctness of one variant on one batch's clean, corrupted and attacked images."""
    with torch.no_grad(), autocast(cfg.precision, y.device):
        for key, xb in inputs.items():
            xb = xb.float().div_(255.0) if xb.dtype == torch.uint8 else xb
            out.setdefault(key, []).append((model(xb).argmax(1) == y).cpu())
    clean_ok = out["clean"][-1].to(y.device)
    for name in cfg.attack:
        g = generator(derived_seed(cfg.seed, "attack", name, b), place)
        x_adv = run_attack(model, inputs["clean"], y, name, eps=cfg.eps, steps=cfg.steps,
                           norm=cfg.norm, generator=g)  # fmt: skip
        with torch.no_grad():
            ok = (model(x_adv).argmax(1) == y) & clean_ok
        out.setdefault(f"robust/{name}", []).append(ok.cpu())
