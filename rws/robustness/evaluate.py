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

import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
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
from rws.robustness.stats import accuracy, add_holm, compare, compare_pooled
from rws.runtime.device import on_device, resolve_device
from rws.runtime.modes import eval_mode
from rws.runtime.progress import progress_bar
from rws.runtime.seed import derived_seed, generator

logger = logging.getLogger(__name__)

PatchArg = Patch | tuple[Patch, float]
DataArg = ImageDataset | Split | tuple[torch.Tensor, torch.Tensor] | str
BaselineArg = Report | str | os.PathLike | nn.Module | None
Advance = Callable[..., None]

__all__ = ["EvalConfig", "evaluate"]


# --- running ------------------------------------------------------------------------------------


@contextmanager
def _evaluating(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Eval mode on ``device``; the modes and the original device come back on exit."""
    with on_device(model, device), eval_mode(model):
        yield


def _predict(model: nn.Module, x: torch.Tensor, dev: torch.device, amp: bool) -> torch.Tensor:
    on_cuda = dev.type == "cuda"
    dtype = torch.bfloat16 if on_cuda and torch.cuda.is_bf16_supported() else torch.float16
    with torch.no_grad(), torch.autocast(dev.type, dtype=dtype, enabled=amp and on_cuda):
        return model(x.to(dev)).argmax(1).cpu()


def _run_variant(
    model: nn.Module, inp: EvalInputs, cfg: EvalConfig, dev: torch.device, advance: Advance,
    attacks: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:  # fmt: skip
    """Per-example correctness on this rank's batches, and the digests of what was fed."""
    res: dict[str, list[torch.Tensor]] = {}
    seen: dict[str, str] = {}
    for b in inp.local:
        a, z = inp.batches[b]
        xb = inp.clean(b)
        seen[f"clean#{b}"] = tensor_sha256(xb)
        res.setdefault("clean", []).append(_predict(model, xb, dev, cfg.amp) == inp.y[a:z])
    advance(len(inp.local))
    for cell in inp.cells:
        key = f"{cell[0]}/{cell[1]}"
        for b in inp.local:
            a, z = inp.batches[b]
            q = inp.corrupted(cell, b)
            seen[f"{key}#{b}"] = tensor_sha256(q)
            xb = q.to(dev).float().div_(255.0)
            res.setdefault(key, []).append(_predict(model, xb, dev, cfg.amp) == inp.y[a:z])
        advance(len(inp.local))
    for name in cfg.attack if attacks else ():
        for b, clean_ok in zip(inp.local, res.get("clean", []), strict=True):
            a, z = inp.batches[b]
            g = generator(derived_seed(cfg.seed, "attack", name, b))
            xb, yb = inp.clean(b).to(dev), inp.y[a:z].to(dev)
            x_adv = run_attack(model, xb, yb, name, eps=cfg.eps, steps=cfg.steps, norm=cfg.norm,
                               generator=g)  # fmt: skip
            ok = (_predict(model, x_adv, dev, amp=False) == inp.y[a:z]) & clean_ok
            res.setdefault(f"robust/{name}", []).append(ok)
            advance(1)
    return {k: torch.cat(v) for k, v in res.items()}, seen


def _masking(
    model: nn.Module, inp: EvalInputs, cfg: EvalConfig, dev: torch.device
) -> tuple[list[str], dict[str, Any]]:
    """Gradient-masking warnings, and the convergence checks' numbers when ``cfg.checks``."""
    found: tuple[list[str], dict[str, Any]] = ([], {})
    if dist.is_main():
        k = min(cfg.masking_examples, inp.x.shape[0])
        x, y = inp.x[:k].to(dev), inp.y[:k].to(dev)
        g = generator(derived_seed(cfg.seed, "masking"))
        found = (check_gradient_masking(model, x, y, norm=cfg.norm, large_eps=not cfg.checks,
                                        generator=g), {})  # fmt: skip
        if cfg.checks:  # the large-ε PGD runs here instead, with the same generator
            more, section = convergence_checks(model, x, y, cfg.attack[0], eps=cfg.eps,
                                               steps=cfg.steps, norm=cfg.norm, seed=cfg.seed,
                                               generator=g)  # fmt: skip
            found = (found[0] + more, section)
    return dist.broadcast(found)


# --- metrics ------------------------------------------------------------------------------------


def _variant(name: str, patches: list[dict[str, Any]], res: dict[str, torch.Tensor],
             inp: EvalInputs, cfg: EvalConfig) -> Variant:  # fmt: skip
    corr: dict[str, dict[int, float]] = {}
    for c, s in inp.cells:
        corr.setdefault(c, {})[s] = accuracy(res[f"{c}/{s}"])
    cells = [a for sev in corr.values() for a in sev.values()]
    return Variant(
        name=name, patches=patches, clean=accuracy(res["clean"]), corruptions=corr,
        mean_corruption=sum(cells) / len(cells) if cells else None, mce=None,
        robust={a: accuracy(res[f"robust/{a}"]) for a in cfg.attack}, per_example=res,
    )  # fmt: skip


def _vs_base(base: Variant, v: Variant, inp: EvalInputs, cfg: EvalConfig) -> dict[str, Any]:
    """Tests against the unpatched model: McNemar per cell, Wilcoxon over images per pooled row,
    Holm-adjusted over every tested row of this variant (:mod:`rws.robustness.stats`)."""
    pb, pv = base.per_example, v.per_example
    family: list[dict[str, Any]] = []

    def tested(cmp: dict[str, Any]) -> dict[str, Any]:
        family.append(cmp)
        return cmp

    def cell(key: str) -> dict[str, Any]:
        return tested(compare(pb[key], pv[key]))

    def pooled(name: str, keys: list[str]) -> dict[str, Any]:
        # (images, cells): every cell holds the same images in the same order
        b, o = (torch.stack([p[k] for k in keys], dim=1) for p in (pb, pv))
        return tested(compare_pooled(b, o, seed=derived_seed(cfg.seed, "bootstrap", name)))

    out: dict[str, Any] = {"clean": cell("clean"), "corruptions": {}}
    for c, sev in v.corruptions.items():
        out["corruptions"][c] = pooled(c, [f"{c}/{s}" for s in sev])
        out["corruptions"][c]["severities"] = {s: cell(f"{c}/{s}") for s in sev}
    if inp.cells:
        out["mean_corruption"] = pooled("mean_corruption", [f"{c}/{s}" for c, s in inp.cells])
    out["mce"] = None if v.mce is None or base.mce is None else v.mce - base.mce
    out["robust"] = {a: cell(f"robust/{a}") for a in cfg.attack}
    add_holm(family)
    return out


# --- the entry point ----------------------------------------------------------------------------


def _patch_info(item: PatchArg) -> tuple[str, dict[str, Any]]:
    p, alpha = item if isinstance(item, tuple) else (item, None)
    name = p.label + ("" if alpha is None else f"@{alpha:g}")
    info = {"name": p.label, "alpha": 1.0 if alpha is None else float(alpha), "scale": p.scale,
            "fingerprint": p.fingerprint(), "source": p.source}  # fmt: skip
    return name, info


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
    **settings: Any,
) -> Report:
    """Evaluate ``model`` and each patched variant on the same clean, corrupted and attacked inputs.

    Args:
        model: the unpatched classifier (images in [0, 1], normalisation inside); restored exactly
            (weights, train/eval modes, device) on return.
        data: a dataset spec (``"digits"``, ``"cifar10c:DIR"`` …), an ``ImageDataset`` (its test
            split is used), a ``Split`` or ``(x, y)``.
        config: the settings (:class:`EvalConfig`); or give them as keywords instead.
        patches: each a ``Patch`` or ``(Patch, α)``: one patched variant each.
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
    inp = EvalInputs.for_this_rank(split.x[:n], split.y[:n], cells, batch_size=cfg.batch_size)
    items = [_patch_info(p) for p in patches]
    errs, base_info = baseline_errors(baseline, inp.cells)
    show = progress and dist.is_main()
    start = time.perf_counter()
    with _evaluating(model, dev):
        with progress_bar("caching corrupted inputs", len(inp.local) * len(cells),
                          enabled=show) as advance:  # fmt: skip
            inp.build(seed=cfg.seed, params=cfg.params, source=source, device=dev, advance=advance)
        keys = ["clean"] + [f"{c}/{s}" for c, s in inp.cells]
        inputs_sha = dist.combined_digest(dist.gather_results({}, inp.digests)[1], keys,
                                          len(inp.batches))  # fmt: skip
        steps = len(inp.local) * (1 + len(inp.cells) + len(cfg.attack)) or 1
        if isinstance(baseline, nn.Module):
            with _evaluating(baseline, dev), progress_bar("baseline model", steps,
                                                          enabled=show) as advance:  # fmt: skip
                local = _run_variant(baseline, inp, cfg, dev, advance, attacks=False)
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
        used: set[str] = set()
        for name, infos, item in plan:
            while name in used:
                name += "'"
            used.add(name)
            ctx = (
                nullcontext()
                if item is None
                else patched(model, item, force=cfg.force, clamp_var=cfg.clamp_var)
            )
            with ctx, progress_bar(f"evaluating {name}", steps, enabled=show) as advance:
                local, seen = _run_variant(model, inp, cfg, dev, advance)
                masking = cfg.attack and cfg.check_masking
                found, checked = _masking(model, inp, cfg, dev) if masking else ([], {})
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
            v = _variant(name, infos, res, inp, cfg)
            v.mce = mean_corruption_error(v, errs)
            if variants:
                v.vs_base = _vs_base(variants[0], v, inp, cfg)
            variants.append(v)
    elapsed = time.perf_counter() - start
    images = n * (1 + len(inp.cells)) * len(variants)
    facts = {
        "data": data_name, "n_examples": n, "test_examples": total,
        "corruptions": list(cfg.corruptions), "severities": list(cfg.severities),
        "params": cfg.params, "table": None if source else table_label(table),
        "corruption_source": source or "rws kernels",
        "kernels": {} if source else {c: kernel_fidelity(c, table) for c in cfg.corruptions},
        "attack": list(cfg.attack), "eps": cfg.eps, "norm": cfg.norm, "batch_size": cfg.batch_size,
        "steps": {a: cfg.steps or ATTACKS.entry(a).info.get("steps") for a in cfg.attack},
        "device": dev.type, "amp": cfg.amp, "seed": cfg.seed, "baseline": base_info,
        "baseline_errors": errs, "inputs_sha256": inputs_sha, "inputs_seen_sha256": seen_sha,
        "warnings": warnings, "world_size": dist.rank_and_world()[1], "rws_version": __version__,
        "torch_version": torch.__version__, "config": cfg.to_dict(),
        "timing": {"elapsed_s": elapsed, "forward_images_per_s": images / max(elapsed, 1e-9)},
    }  # fmt: skip
    if checks:
        facts["checks"] = checks  # rws eval --checks: convergence checks per variant
    logger.info("evaluated %d variants on %d examples in %.1f s", len(variants), n, elapsed)
    return Report(variants, json.loads(json.dumps(facts)))  # as it reads back from JSON
