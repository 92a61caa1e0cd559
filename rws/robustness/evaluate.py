"""Before/after robustness evaluation: the unpatched model and each patch on the same cached inputs.

The inputs are built once (:mod:`rws.robustness.inputs`): the first ``n_examples`` clean test
images, and each corruption × severity generated with a seed derived from (seed, corruption,
severity, batch index) and cached as uint8 (truncated, as CIFAR-10-C was), or read from the
released CIFAR-10-C arrays. Every variant is fed exactly those bytes (their sha256 is recorded per
variant), keeps per-example correctness and is compared with the unpatched model: an exact McNemar
test per single cell (clean, one corruption × severity, one attack), a Wilcoxon signed-rank test on
per-image mean correctness for pooled rows (a corruption over its severities, the mean
corruption), Holm-adjusted over the variant's rows (:mod:`rws.robustness.stats`). Under
``torch.distributed`` the global batches are sharded over ranks (:mod:`rws.robustness.distributed`)
and gathered in order, so a run on N ranks reports exactly what one process would.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rws._version import __version__
from rws.data import ImageDataset, Split, resolve_data
from rws.errors import EvaluationError, UsageError
from rws.io.hashing import tensor_sha256
from rws.patching.ops import patched
from rws.patching.patch import Patch
from rws.robustness import distributed as dist
from rws.robustness.attacks import ATTACKS, check_gradient_masking
from rws.robustness.attacks import attack as run_attack
from rws.robustness.attacks.checks import convergence_checks
from rws.robustness.config import EvalConfig
from rws.robustness.corruptions import kernel_fidelity, resolve_table, table_label
from rws.robustness.inputs import EvalInputs
from rws.robustness.mce import baseline_errors, mean_corruption_error
from rws.robustness.report import Report, Variant
from rws.robustness.stats import accuracy
from rws.robustness.streaming import evaluate_stream, is_batch_stream
from rws.robustness.summary import build_variant, patch_info, unique_name, versus_base
from rws.runtime.device import (
    channels_last,
    on_device,
    probe_batch_size,
    resolve_device,
    to_device,
)
from rws.runtime.modes import eval_mode
from rws.runtime.precision import Precision, autocast, autocast_dtype
from rws.runtime.progress import progress_bar
from rws.runtime.seed import GeneratorPlace, derived_seed, generator, generator_device

logger = logging.getLogger(__name__)

PatchArg = Patch | tuple[Patch, float]
DataArg = ImageDataset | Split | tuple[torch.Tensor, torch.Tensor] | str
BaselineArg = Report | str | os.PathLike | nn.Module | None
Advance = Callable[..., None]
_AUTO_LIMIT = 16384  # the largest forward batch batch_size="auto" tries

__all__ = ["EvalConfig", "evaluate"]


# --- running ------------------------------------------------------------------------------------


@contextmanager
def _evaluating(model: nn.Module, device: torch.device, layout: bool = False) -> Iterator[None]:
    """Eval mode on ``device`` (channels-last with ``layout``); the modes, the original device and
    the memory format come back on exit."""
    with on_device(model, device), eval_mode(model), channels_last(model, layout):
        yield


@dataclass(frozen=True)
class _Runtime:
    """How the forwards run: device, precisions, layout, the module called, batches per forward."""

    dev: torch.device
    precision: Precision  # clean and corrupted forwards
    attack_precision: Precision
    channels_last: bool
    place: GeneratorPlace
    group: int = 1  # global batches per forward pass

    def generator(self, *parts: object) -> torch.Generator:
        return generator(derived_seed(*parts), generator_device(self.place, self.dev))


def _predict(model: nn.Module, x: torch.Tensor, rt: _Runtime, precision: Precision) -> torch.Tensor:
    """Predicted classes ``(N,)`` on the device; uint8 images are scaled to [0, 1] there."""
    xd = to_device(x, rt.dev, channels_last=rt.channels_last)
    xd = xd.float().div_(255.0) if xd.dtype == torch.uint8 else xd
    with torch.no_grad(), autocast(precision, rt.dev):
        return model(xd).argmax(1)


def _forward_group(model: nn.Module, inp: EvalInputs, cfg: EvalConfig, rt: _Runtime) -> int:
    """Global batches per forward: 1, or with ``batch_size="auto"`` on CUDA as many as fit."""
    if cfg.batch_size != "auto" or not len(inp.local):
        return 1
    limit = min(_AUTO_LIMIT, len(inp.local) * inp.batch_size)
    probe = lambda k: _predict(model, inp.x.new_zeros((k, *inp.x.shape[1:])), rt, rt.precision)  # noqa: E731
    return probe_batch_size(probe, rt.dev, start=inp.batch_size, limit=limit) // inp.batch_size


def _run_variant(
    model: nn.Module, inp: EvalInputs, cfg: EvalConfig, rt: _Runtime, advance: Advance,
    attacks: bool = True, fwd: nn.Module | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:  # fmt: skip
    """Per-example correctness on this rank's batches, and the digests of what was fed. ``fwd``
    (a compiled ``model``) runs the clean and corrupted forwards; results stay on the device
    until the end, so the host queues the next batch while the device works."""
    fwd = model if fwd is None else fwd
    loc, off = inp.local, inp.offset
    y = inp.y[off : off + sum(z - a for a, z in (inp.batches[b] for b in loc))].to(rt.dev)
    groups = [range(b, min(b + rt.group, loc.stop)) for b in range(loc.start, loc.stop, rt.group)]
    res: dict[str, list[torch.Tensor]] = {}
    seen: dict[str, str] = {}
    for cell in [None, *inp.cells]:
        key = "clean" if cell is None else f"{cell[0]}/{cell[1]}"
        for g in groups:
            for b in g:
                seen[f"{key}#{b}"] = tensor_sha256(inp.clean(b) if cell is None else
                                                   inp.corrupted(cell, b))  # fmt: skip
            a, z = inp.batches[g[0]][0] - off, inp.batches[g[-1]][1] - off
            pred = _predict(fwd, inp.images(cell, g), rt, rt.precision)
            res.setdefault(key, []).append(pred == y[a:z])
        advance(len(loc))
    clean_ok = torch.cat(res["clean"])
    for name in cfg.attack if attacks else ():
        for b in loc:
            a, z = inp.batches[b][0] - off, inp.batches[b][1] - off
            xb = to_device(inp.clean(b), rt.dev)
            x_adv = run_attack(model, xb, y[a:z], name, eps=cfg.eps, steps=cfg.steps,
                               norm=cfg.norm, generator=rt.generator(cfg.seed, "attack", name, b),
                               precision=rt.attack_precision)  # fmt: skip
            ok = (_predict(model, x_adv, rt, "fp32") == y[a:z]) & clean_ok[a:z]
            res.setdefault(f"robust/{name}", []).append(ok)
            advance(1)
    return {k: torch.cat(v).cpu() for k, v in res.items()}, seen


def _masking(
    model: nn.Module, inp: EvalInputs, cfg: EvalConfig, dev: torch.device
) -> tuple[list[str], dict[str, Any]]:
    """Gradient-masking warnings, and the convergence checks' numbers when ``cfg.checks``."""
    found: tuple[list[str], dict[str, Any]] = ([], {})
    if dist.is_main():
        k = min(cfg.masking_examples, inp.x.shape[0])
        x, y = inp.x[:k].to(dev), inp.y[:k].to(dev)
        g = generator(derived_seed(cfg.seed, "masking"), generator_device(cfg.generator, dev))
        found = (check_gradient_masking(model, x, y, norm=cfg.norm, large_eps=not cfg.checks,
                                        generator=g), {})  # fmt: skip
        if cfg.checks:  # the large-ε PGD runs here instead, with the same generator
            more, section = convergence_checks(model, x, y, cfg.attack[0], eps=cfg.eps,
                                               steps=cfg.steps, norm=cfg.norm, seed=cfg.seed,
                                               generator=g)  # fmt: skip
            found = (found[0] + more, section)
    return dist.broadcast(found)


def _runtime_facts(rt: _Runtime, inp: EvalInputs, cfg: EvalConfig) -> dict[str, Any]:
    """How the run ran: precisions and autocast dtype, layout, compile, the device's name, the
    generator's device, images per forward pass, background building."""
    dtype, cuda = autocast_dtype(rt.precision, rt.dev) or torch.float32, rt.dev.type == "cuda"
    return {"precision": rt.precision, "autocast_dtype": str(dtype)[6:], "compile": cfg.compile,
            "attack_precision": rt.attack_precision, "channels_last": rt.channels_last,
            "device_name": torch.cuda.get_device_name(rt.dev) if cuda else "cpu",
            "generator_device": generator_device(rt.place, rt.dev).type,
            "forward_batch": rt.group * inp.batch_size, "background_inputs": cuda}  # fmt: skip


def _vs_base(base: Variant, v: Variant, inp: Any, cfg: EvalConfig) -> dict[str, Any]:
    """:func:`~rws.robustness.summary.versus_base` over ``inp.cells`` and ``cfg``'s attacks and seed."""
    return versus_base(base, v, inp.cells, cfg.attack, cfg.seed)


# --- the entry point ----------------------------------------------------------------------------


def _test_split(data: DataArg) -> tuple[Split, str, str | None]:
    if isinstance(data, str):
        ds, source = resolve_data(data)
        return ds.test, ds.name, source
    if isinstance(data, ImageDataset):
        return data.test, data.name, None
    if isinstance(data, Split):
        return data, "<Split>", None
    if isinstance(data, tuple) and len(data) == 2:
        return Split(data[0], data[1]), "<tensors>", None
    raise UsageError(
        f"data must be a dataset spec, ImageDataset, Split or (x, y), not {type(data).__name__}"
    )


def _config(config: EvalConfig | None, settings: dict[str, Any]) -> EvalConfig:
    if config is not None and settings:
        raise UsageError(
            f"evaluate: give an EvalConfig or keyword settings, not both ({', '.join(settings)})"
        )
    if config is not None:
        if not isinstance(config, EvalConfig):
            raise UsageError(f"config must be an EvalConfig, not {type(config).__name__}")
        return config
    fields = set(EvalConfig.__dataclass_fields__) - {"extra"}
    unknown = sorted(set(settings) - fields)
    if unknown:
        raise TypeError(f"evaluate() got unexpected keyword argument(s): {', '.join(unknown)}")
    return EvalConfig(**settings)


def evaluate(
    model: nn.Module,
    data: DataArg,
    config: EvalConfig | None = None,
    *,
    patches: Sequence[PatchArg] = (),
    baseline: BaselineArg = None,
    progress: bool = False,
    models: Sequence[tuple[str, nn.Module]] = (),
    **settings: Any,
) -> Report:
    """Evaluate ``model`` and each patched variant on the same clean, corrupted and attacked inputs.

    Args:
        model: the unpatched classifier (images in [0, 1], normalisation inside); restored exactly
            (weights, train/eval modes, device) on return.
        data: a dataset spec (``"digits"``, ``"cifar10c:DIR"`` …), an ``ImageDataset`` (its test
            split is used), a ``Split`` or ``(x, y)``; or a ``DataLoader`` / any iterable of
            ``(x, y)`` batches, read once and never held whole (:mod:`rws.robustness.streaming`).
        config: the settings (:class:`EvalConfig`); or give them as keywords instead.
        patches: each a ``Patch`` or ``(Patch, α)``: one patched variant each.
        models: ``(name, module)`` pairs evaluated as whole variants on the same inputs, after
            the patches (e.g. an ``rws.Router`` serving ``model``: the routed variant).
        baseline: for mCE: a ``Report`` or its JSON path (its unpatched model's errors), a model
            (evaluated on the same inputs) or ``"alexnet"`` (AlexNet ImageNet-C errors).
        progress: rich progress bars on stderr (rank 0 only).
        **settings: any :class:`EvalConfig` field by name (``corruptions="all"``,
            ``severities=(1, 3, 5)``, ``attack="pgd"``, ``eps="8/255"``, ``n_examples=…`` …).

    Returns:
        The :class:`~rws.robustness.report.Report`, unpatched model first (on every rank); its
        settings hold the config (``settings["config"]``) and what the run found and measured.

    Raises:
        UsageError, UnknownNameError: bad arguments. EvaluationError: ``strict`` and a warning.

    Example:
        >>> report = evaluate(model, "digits", corruptions=["fog"], attack="pgd")  # doctest: +SKIP
    """
    cfg = _config(config, settings)
    if is_batch_stream(data):  # a DataLoader or any iterable of (x, y) batches: read once
        if baseline is not None:
            raise UsageError(
                "a baseline needs the in-memory evaluation; give a dataset, not a loader"
            )
        if models:
            raise UsageError(
                "models=… needs the in-memory evaluation; give a dataset, not a loader"
            )
        return evaluate_stream(model, data, cfg, patches=patches, progress=progress)
    split, data_name, source = _test_split(data)
    source = cfg.corruption_source if cfg.corruption_source is not None else source
    total = len(split)
    if cfg.n_examples is not None and cfg.n_examples > total:
        logger.warning("n_examples=%d but the test split has %d; using all", cfg.n_examples, total)
    n = total if cfg.n_examples is None else min(cfg.n_examples, total)
    table = resolve_table(cfg.params, *split.x.shape[-2:])  # the severity table that runs
    dev = resolve_device(cfg.device)
    if cfg.amp and dev.type != "cuda":
        logger.info("amp is only used on CUDA; evaluating in fp32")
    cells = [(c, s) for c in cfg.corruptions for s in cfg.severities]
    inp = EvalInputs.for_this_rank(split.x[:n], split.y[:n], cells, batch_size=cfg.seed_batch)
    items = [patch_info(p) for p in patches]
    errs, base_info = baseline_errors(baseline, inp.cells)
    show = progress and dist.is_main()
    # the older amp switch: bf16 CUDA forwards (fp16 where bf16 is unsupported) when fp32
    amp = cfg.precision == "fp32" and cfg.amp and dev.type == "cuda"
    rt = _Runtime(dev, "bf16" if amp else cfg.precision, cfg.precision, cfg.channels_last,
                  cfg.generator)  # fmt: skip
    background = dev.type == "cuda"  # cells built on a side stream while the forwards run
    start = time.perf_counter()
    with _evaluating(model, dev, cfg.channels_last):
        rt = dataclasses.replace(rt, group=_forward_group(model, inp, cfg, rt))
        fwd = torch.compile(model) if cfg.compile else model
        with progress_bar("caching corrupted inputs", len(inp.local) * len(cells),
                          enabled=show and not background) as advance:  # fmt: skip
            inp.build(seed=cfg.seed, params=cfg.params, source=source, device=dev,
                      advance=advance, generator=cfg.generator, background=background)  # fmt: skip
        keys = ["clean"] + [f"{c}/{s}" for c, s in inp.cells]
        steps = len(inp.local) * (1 + len(inp.cells) + len(cfg.attack)) or 1
        if isinstance(baseline, nn.Module):
            with _evaluating(baseline, dev, cfg.channels_last), progress_bar(
                "baseline model", steps, enabled=show
            ) as advance:  # fmt: skip
                local = _run_variant(baseline, inp, cfg, rt, advance, attacks=False)
                res, _ = dist.gather_results(*local)
            errs = {c: {s: 1.0 - accuracy(res[f"{c}/{s}"]) for cc, s in inp.cells if cc == c}
                    for c, _ in inp.cells}  # fmt: skip
            base_info = {"kind": "model", "source": type(baseline).__name__}
        variants: list[Variant] = []
        seen_sha: dict[str, str] = {}
        warnings: list[str] = []
        checks: dict[str, Any] = {}
        plan: list[tuple[str, list[dict[str, Any]], PatchArg | None]] = [("base", [], None)]
        plan += [(nm, [info], p) for (nm, info), p in zip(items, patches, strict=True)]
        plan += [(nm, [{"name": nm, "model": type(m).__name__}], m) for nm, m in models]
        used: set[str] = set()
        for label, infos, item in plan:
            name = unique_name(label, used)
            whole = isinstance(item, nn.Module)  # a models=… variant: run it, patch nothing
            net = item if whole else model
            ctx = (
                nullcontext()
                if item is None or whole
                else patched(model, item, force=cfg.force, clamp_var=cfg.clamp_var)
            )
            with ctx, progress_bar(f"evaluating {name}", steps, enabled=show) as advance:
                local, seen = _run_variant(net, inp, cfg, rt, advance, fwd=net if whole else fwd)
                masking = cfg.attack and cfg.check_masking
                found, checked = _masking(net, inp, cfg, dev) if masking else ([], {})
            res, seen = dist.gather_results(local, seen)
            seen_sha[name] = dist.combined_digest(seen, keys, len(inp.batches))
            warnings += [f"{name}: {w}" for w in found]
            if checked:
                checks[name] = checked
            if cfg.strict and found:
                more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
                raise EvaluationError(
                    f"variant {name}: {found[0]}{more}; evaluation refused (--strict)"
                )
            v = build_variant(name, infos, res, inp.cells, cfg.attack)
            v.mce = mean_corruption_error(v, errs)
            if variants:
                v.vs_base = _vs_base(variants[0], v, inp, cfg)
            variants.append(v)
        inp.wait()
        inputs_sha = dist.combined_digest(dist.gather_results({}, inp.digests)[1], keys,
                                          len(inp.batches))  # fmt: skip
    elapsed = time.perf_counter() - start
    images = n * (1 + len(inp.cells)) * len(variants)
    facts = {
        "data": data_name, "n_examples": n, "test_examples": total,
        "corruptions": list(cfg.corruptions), "severities": list(cfg.severities),
        "params": cfg.params, "table": None if source else table_label(table),
        "corruption_source": source or "rws kernels",
        "kernels": {} if source else {c: kernel_fidelity(c, table) for c in cfg.corruptions},
        "attack": list(cfg.attack), "eps": cfg.eps, "norm": cfg.norm, "batch_size": cfg.seed_batch,
        "steps": {a: cfg.steps or ATTACKS.entry(a).info.get("steps") for a in cfg.attack},
        "device": dev.type, "amp": cfg.amp, "seed": cfg.seed, "baseline": base_info,
        "runtime": _runtime_facts(rt, inp, cfg),
        "baseline_errors": errs, "inputs_sha256": inputs_sha, "inputs_seen_sha256": seen_sha,
        "warnings": warnings, "world_size": dist.rank_and_world()[1], "rws_version": __version__,
        "torch_version": torch.__version__, "config": cfg.to_dict(),
        "timing": {"elapsed_s": elapsed, "forward_images_per_s": images / max(elapsed, 1e-9)},
    }  # fmt: skip
    if checks:
        facts["checks"] = checks  # rws eval --checks: convergence checks per variant
    logger.info("evaluated %d variants on %d examples in %.1f s", len(variants), n, elapsed)
    return Report(variants, json.loads(json.dumps(facts)))  # as it reads back from JSON
