"""Before/after robustness evaluation: the unpatched model and each patch on the same cached inputs.

The inputs are built once: the first ``n_examples`` clean test images, and each corruption ×
severity generated with a seed derived from (seed, corruption, severity, batch index) and cached as
uint8 (truncated, as CIFAR-10-C was), or read from the released CIFAR-10-C arrays. Every variant is
fed exactly those bytes (their sha256 is recorded per variant), keeps per-example correctness and is
compared with the unpatched model by an exact McNemar test. Under ``torch.distributed`` the global
batches are sharded over ranks (:mod:`rws.robustness.distributed`) and gathered in order, so a run on
N ranks reports exactly what one process would.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from rws._version import __version__
from rws.data import ImageDataset, Split, load_cifar_c, resolve_data
from rws.errors import (
    EvaluationError,
    MalformedInputError,
    UsageError,
)
from rws.patching.ops import patched
from rws.patching.patch import Patch
from rws.robustness import distributed as dist
from rws.robustness.attacks import attack as run_attack
from rws.robustness.attacks import check_gradient_masking, get_attack, parse_eps
from rws.robustness.corruptions import CORRUPTIONS, corrupt, get_corruption
from rws.robustness.report import (
    Report,
    Variant,
    accuracy,
    baseline_errors,
    compare,
    mean_corruption_error,
)
from rws.runtime.device import resolve_device

logger = logging.getLogger(__name__)

PatchArg = Patch | tuple[Patch, float]
DataArg = ImageDataset | Split | tuple[torch.Tensor, torch.Tensor] | str
BaselineArg = Report | str | os.PathLike | nn.Module | None


# --- data and model -----------------------------------------------------------------------------


# --- inputs -------------------------------------------------------------------------------------


@dataclass
class _Inputs:
    x: torch.Tensor  # (n, 3, H, W) float32 clean images, CPU
    y: torch.Tensor  # (n,) int64
    batches: list[tuple[int, int]]  # global batches
    local: range  # this rank's batch indices
    cells: list[tuple[str, int]]  # (corruption, severity)
    cache: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)  # local uint8 shard
    digests: dict[str, str] = field(default_factory=dict)  # "key#batch" -> sha256

    @property
    def offset(self) -> int:
        return self.batches[self.local.start][0] if len(self.local) else 0

    def clean(self, b: int) -> torch.Tensor:
        a, z = self.batches[b]
        return self.x[a:z]

    def corrupted(self, cell: tuple[str, int], b: int) -> torch.Tensor:
        a, z = self.batches[b]
        return self.cache[cell][a - self.offset : z - self.offset]


def _seed(*parts: object) -> int:
    h = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def _sha(t: torch.Tensor) -> str:
    return hashlib.sha256(memoryview(t.contiguous().numpy()).cast("B")).hexdigest()


def _quantize(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats → uint8 by truncation, as the reference's ``np.uint8``; the 1e-3 keeps values
    already on the uint8 grid where they are despite float rounding."""
    return (x.clamp(0.0, 1.0) * 255.0 + 1e-3).floor_().to(torch.uint8)


def _build_inputs(
    inp: _Inputs, *, seed: int, params: str, source: str | None, device: torch.device, bar: Any
) -> None:
    for b in inp.local:
        inp.digests[f"clean#{b}"] = _sha(inp.clean(b))
    n = inp.x.shape[0]
    lo = inp.offset
    hi = inp.batches[inp.local[-1]][1] if len(inp.local) else lo
    for c, s in inp.cells:
        if source is not None:
            split = load_cifar_c(source, c, s)
            if split.y.shape[0] < n or not torch.equal(split.y[:n], inp.y):
                raise MalformedInputError(
                    Path(source) / "labels.npy", "labels differ from the clean test set's"
                )
            if split.x.shape[1:] != inp.x.shape[1:]:
                raise UsageError(
                    f"{source}: {c} images are {tuple(split.x.shape[1:])}, the clean test images "
                    f"{tuple(inp.x.shape[1:])}"
                )
            inp.cache[(c, s)] = (split.x[lo:hi] * 255.0).round_().to(torch.uint8)
            bar(len(inp.local))
        else:
            parts = []
            for b in inp.local:
                g = torch.Generator().manual_seed(_seed(seed, c, s, b))
                out = corrupt(inp.clean(b).to(device), c, s, params=params, generator=g)
                parts.append(_quantize(out).cpu())
                bar(1)
            inp.cache[(c, s)] = torch.cat(parts) if parts else torch.empty(0, dtype=torch.uint8)
        for b in inp.local:
            inp.digests[f"{c}/{s}#{b}"] = _sha(inp.corrupted((c, s), b))


# --- running ------------------------------------------------------------------------------------


@contextmanager
def _on_device(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Eval mode on ``device``; the modes and the original device come back on exit."""
    first = next(model.parameters(), None)
    home = first.device if first is not None else torch.device("cpu")
    modes = [(m, m.training) for m in model.modules()]
    model.to(device).eval()
    try:
        yield
    finally:
        model.to(home)
        for m, training in modes:
            m.training = training


@dataclass
class _Cfg:
    attacks: list[str]
    eps: float
    steps: int | None
    norm: str
    seed: int
    amp: bool
    device: torch.device
    check_masking: bool
    masking_examples: int


def _predict(model: nn.Module, x: torch.Tensor, cfg: _Cfg, amp: bool) -> torch.Tensor:
    on_cuda = cfg.device.type == "cuda"
    dtype = torch.bfloat16 if on_cuda and torch.cuda.is_bf16_supported() else torch.float16
    with torch.no_grad(), torch.autocast(cfg.device.type, dtype=dtype, enabled=amp and on_cuda):
        return model(x.to(cfg.device)).argmax(1).cpu()


def _run_variant(
    model: nn.Module, inp: _Inputs, cfg: _Cfg, bar: Any, attacks: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Per-example correctness on this rank's batches, and the digests of what was fed."""
    res: dict[str, list[torch.Tensor]] = {}
    seen: dict[str, str] = {}
    for b in inp.local:
        a, z = inp.batches[b]
        xb = inp.clean(b)
        seen[f"clean#{b}"] = _sha(xb)
        res.setdefault("clean", []).append(_predict(model, xb, cfg, cfg.amp) == inp.y[a:z])
    bar(len(inp.local))
    for cell in inp.cells:
        key = f"{cell[0]}/{cell[1]}"
        for b in inp.local:
            a, z = inp.batches[b]
            q = inp.corrupted(cell, b)
            seen[f"{key}#{b}"] = _sha(q)
            xb = q.to(cfg.device).float().div_(255.0)
            res.setdefault(key, []).append(_predict(model, xb, cfg, cfg.amp) == inp.y[a:z])
        bar(len(inp.local))
    for name in cfg.attacks if attacks else []:
        for b, clean_ok in zip(inp.local, res.get("clean", []), strict=True):
            a, z = inp.batches[b]
            g = torch.Generator().manual_seed(_seed(cfg.seed, "attack", name, b))
            xb, yb = inp.clean(b).to(cfg.device), inp.y[a:z].to(cfg.device)
            x_adv = run_attack(model, xb, yb, name, eps=cfg.eps, steps=cfg.steps, norm=cfg.norm,
                               generator=g)  # fmt: skip
            ok = (_predict(model, x_adv, cfg, amp=False) == inp.y[a:z]) & clean_ok
            res.setdefault(f"robust/{name}", []).append(ok)
            bar(1)
    return {k: torch.cat(v) for k, v in res.items()}, seen


def _masking(model: nn.Module, inp: _Inputs, cfg: _Cfg) -> list[str]:
    warnings: list[str] = []
    if dist.is_main():
        k = min(cfg.masking_examples, inp.x.shape[0])
        x, y = inp.x[:k].to(cfg.device), inp.y[:k].to(cfg.device)
        g = torch.Generator().manual_seed(_seed(cfg.seed, "masking"))
        warnings = check_gradient_masking(model, x, y, norm=cfg.norm, generator=g)
    return dist.broadcast(warnings)


# --- metrics ------------------------------------------------------------------------------------


def _variant(name: str, patches: list[dict[str, Any]], res: dict[str, torch.Tensor],
             inp: _Inputs, cfg: _Cfg) -> Variant:  # fmt: skip
    corr: dict[str, dict[int, float]] = {}
    for c, s in inp.cells:
        corr.setdefault(c, {})[s] = accuracy(res[f"{c}/{s}"])
    cells = [a for sev in corr.values() for a in sev.values()]
    return Variant(
        name=name, patches=patches, clean=accuracy(res["clean"]), corruptions=corr,
        mean_corruption=sum(cells) / len(cells) if cells else None, mce=None,
        robust={a: accuracy(res[f"robust/{a}"]) for a in cfg.attacks}, per_example=res,
    )  # fmt: skip


def _vs_base(base: Variant, v: Variant, inp: _Inputs, cfg: _Cfg) -> dict[str, Any]:
    pb, pv = base.per_example, v.per_example
    out: dict[str, Any] = {"clean": compare(pb["clean"], pv["clean"]), "corruptions": {}}
    for c in v.corruptions:
        keys = [f"{c}/{s}" for s in v.corruptions[c]]
        pooled = compare(torch.cat([pb[k] for k in keys]), torch.cat([pv[k] for k in keys]))
        pooled["severities"] = {
            s: compare(pb[f"{c}/{s}"], pv[f"{c}/{s}"]) for s in v.corruptions[c]
        }
        out["corruptions"][c] = pooled
    if inp.cells:
        keys = [f"{c}/{s}" for c, s in inp.cells]
        out["mean_corruption"] = compare(
            torch.cat([pb[k] for k in keys]), torch.cat([pv[k] for k in keys])
        )
    out["mce"] = None if v.mce is None or base.mce is None else v.mce - base.mce
    out["robust"] = {a: compare(pb[f"robust/{a}"], pv[f"robust/{a}"]) for a in cfg.attacks}
    return out


# --- the entry point ----------------------------------------------------------------------------


def _check_args(
    corruptions: Any, severities: Sequence[int], attack: Any
) -> tuple[list, list, list]:
    if corruptions is None:
        names: list[str] = []
    elif corruptions == "all":
        names = list(CORRUPTIONS)
    else:
        names = [corruptions] if isinstance(corruptions, str) else list(corruptions)
    for c in names:
        get_corruption(c)  # UnknownNameError lists the choices
    sevs = list(dict.fromkeys(severities))
    for s in sevs:
        if isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= 5:
            raise UsageError(f"severity must be an integer from 1 to 5, got {s!r}")
    if attack is None or attack == "none":
        attacks: list[str] = []
    else:
        attacks = [attack] if isinstance(attack, str) else list(attack)
    for a in attacks:
        get_attack(a)
    return names, sevs, attacks


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


def evaluate(
    model: nn.Module,
    data: DataArg,
    *,
    corruptions: Sequence[str] | Literal["all"] | None = "all",
    severities: Sequence[int] = (1, 2, 3, 4, 5),
    attack: str | Sequence[str] | None = None,
    eps: float | str = 8 / 255,
    steps: int | None = None,
    norm: Literal["linf", "l2"] = "linf",
    patches: Sequence[PatchArg] = (),
    n_examples: int | None = None,
    batch_size: int = 256,
    device: str = "auto",
    amp: bool = False,
    seed: int = 0,
    baseline: BaselineArg = None,
    params: Literal["auto", "cifar", "imagenet"] = "auto",
    corruption_source: str | os.PathLike | None = None,
    check_masking: bool = True,
    masking_examples: int = 128,
    strict: bool = False,
    force: bool = False,
    clamp_var: bool = False,
    progress: bool = False,
) -> Report:
    """Evaluate ``model`` and each patched variant on the same clean, corrupted and attacked inputs.

    Args:
        model: the unpatched classifier (images in [0, 1], normalisation inside); restored exactly
            (weights, train/eval modes, device) on return.
        data: a dataset spec (``"digits"``, ``"cifar10c:DIR"`` …), an ``ImageDataset`` (its test
            split is used), a ``Split`` or ``(x, y)``.
        corruptions: names, ``"all"`` (the 15 benchmark corruptions) or None.
        severities: severities 1–5 to evaluate.
        attack: None, an attack name (``"pgd"``, ``"apgd"``, ``"pma"``, ``"autoattack-lite"``) or
            several; examples are attacked per variant, with a seed fixed per batch.
        eps, steps, norm: the attack budget (``eps`` may be ``"8/255"``).
        patches: each a ``Patch`` or ``(Patch, α)``: one patched variant each.
        n_examples: evaluate the first ``n`` test examples (all when None).
        batch_size: images per forward pass (also the unit of sharding and of seeding).
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:n]"``.
        amp: autocast (bf16/fp16) for clean and corruption forwards on CUDA; attacks stay fp32.
        seed: root of every seed (corruptions, attacks, masking checks).
        baseline: for mCE: a ``Report`` or its JSON path (its unpatched model's errors), a model
            (evaluated on the same inputs) or ``"alexnet"`` (AlexNet ImageNet-C errors).
        params: corruption severity table (``"auto"`` picks by image size).
        corruption_source: a folder of released CIFAR-10-C-style arrays to use instead of kernels.
        check_masking: run :func:`check_gradient_masking` on each variant when attacking.
        masking_examples: examples used by those checks.
        strict: raise ``EvaluationError`` when a check warns.
        force: apply patches whose base fingerprints differ from the model's.
        clamp_var: clamp BatchNorm running variances a patch drives below 0 (else refused).
        progress: rich progress bars on stderr.

    Returns:
        The :class:`~rws.robustness.report.Report`, unpatched model first (on every rank).

    Raises:
        UsageError, UnknownNameError: bad arguments. EvaluationError: ``strict`` and a warning.

    Example:
        >>> report = evaluate(model, "digits", corruptions=["fog"], attack="pgd")  # doctest: +SKIP
    """
    names, sevs, attacks = _check_args(corruptions, severities, attack)
    eps_f = parse_eps(eps)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch_size must be a positive integer, got {batch_size!r}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise UsageError(f"steps must be a positive integer, got {steps!r}")
    split, data_name, source = _test_split(data)
    source = os.fspath(corruption_source) if corruption_source is not None else source
    total = len(split)
    if n_examples is not None:
        if isinstance(n_examples, bool) or not isinstance(n_examples, int) or n_examples < 1:
            raise UsageError(f"n_examples must be a positive integer, got {n_examples!r}")
        if n_examples > total:
            logger.warning("n_examples=%d but the test split has %d; using all", n_examples, total)
    n = total if n_examples is None else min(n_examples, total)
    dev = resolve_device(device)
    if amp and dev.type != "cuda":
        logger.info("amp is only used on CUDA; evaluating in fp32")
    rank, world = dist.rank_and_world()
    cfg = _Cfg(attacks, eps_f, steps, norm, seed, amp, dev, check_masking, masking_examples)
    batches = dist.batch_ranges(n, batch_size)
    inp = _Inputs(
        x=split.x[:n].float().contiguous(), y=split.y[:n].long(), batches=batches,
        local=dist.shard(len(batches), rank, world), cells=[(c, s) for c in names for s in sevs],
    )  # fmt: skip
    items = [_patch_info(p) for p in patches]
    errs, base_info = baseline_errors(baseline, inp.cells)
    start = time.perf_counter()
    from rich.console import Console
    from rich.progress import Progress

    steps_per_variant = len(inp.local) * (1 + len(inp.cells) + len(attacks)) or 1
    with (
        Progress(console=Console(stderr=True), transient=True,
                 disable=not (progress and dist.is_main())) as prog,
        _on_device(model, dev),
    ):  # fmt: skip
        task = prog.add_task("caching corrupted inputs", total=len(inp.local) * len(inp.cells))
        _build_inputs(inp, seed=seed, params=params, source=source, device=dev,
                      bar=lambda k: prog.advance(task, k))  # fmt: skip
        inputs_digests = dist.gather_results({}, inp.digests)[1]
        keys = ["clean"] + [f"{c}/{s}" for c, s in inp.cells]
        inputs_sha = dist.combined_digest(inputs_digests, keys, len(batches))
        if isinstance(baseline, nn.Module):
            task = prog.add_task("baseline model", total=steps_per_variant)
            with _on_device(baseline, dev):
                bar = lambda k: prog.advance(task, k)  # noqa: E731
                res, _ = dist.gather_results(*_run_variant(baseline, inp, cfg, bar, attacks=False))
            errs = {c: {s: 1.0 - accuracy(res[f"{c}/{s}"]) for cc, s in inp.cells if cc == c}
                    for c, _ in inp.cells}  # fmt: skip
            base_info = {"kind": "model", "source": type(baseline).__name__}
        variants: list[Variant] = []
        seen_sha: dict[str, str] = {}
        warnings: list[str] = []
        plan = [
            ("base", [], None),
            *((nm, [info], p) for (nm, info), p in zip(items, patches, strict=True)),
        ]
        used: set[str] = set()
        for name, infos, item in plan:
            while name in used:
                name += "'"
            used.add(name)
            task = prog.add_task(f"evaluating {name}", total=steps_per_variant)
            ctx = (
                nullcontext()
                if item is None
                else patched(model, item, force=force, clamp_var=clamp_var)
            )
            with ctx:
                local, seen = _run_variant(model, inp, cfg, lambda k, t=task: prog.advance(t, k))
                found = _masking(model, inp, cfg) if attacks and check_masking else []
            res, seen = dist.gather_results(local, seen)
            seen_sha[name] = dist.combined_digest(seen, keys, len(batches))
            warnings += [f"{name}: {w}" for w in found]
            if strict and found:
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
    settings = {
        "data": data_name, "n_examples": n, "test_examples": total, "corruptions": names,
        "severities": sevs, "params": params, "corruption_source": source or "rws kernels",
        "attack": attacks, "eps": eps_f, "norm": norm, "batch_size": batch_size,
        "steps": {a: steps or get_attack(a).info.get("steps") for a in attacks},
        "device": dev.type, "amp": amp, "seed": seed, "baseline": base_info,
        "baseline_errors": errs, "inputs_sha256": inputs_sha, "inputs_seen_sha256": seen_sha,
        "warnings": warnings, "world_size": world, "rws_version": __version__,
        "torch_version": torch.__version__,
        "timing": {"elapsed_s": elapsed, "forward_images_per_s": images / max(elapsed, 1e-9)},
    }  # fmt: skip
    logger.info("evaluated %d variants on %d examples in %.1f s", len(variants), n, elapsed)
    return Report(variants, json.loads(json.dumps(settings)))  # as it reads back from JSON
