"""``extract``: checkpoint → select → method → codec → :class:`~rws.patching.patch.Patch`."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from rws.errors import MissingTensorError, ShapeMismatchError, UsageError
from rws.io.checkpoint import Checkpoint, Source, describe_source, open_checkpoint
from rws.io.unwrap import unwrap_module
from rws.methods.registry import get_method
from rws.patching import codecs
from rws.patching.codec_map import CodecMapSpec, CodecPlan
from rws.patching.order import GUESSED, DepthOrder, OrderSpec, resolve_order
from rws.patching.patch import Patch, check_name, encode_deltas, provenance
from rws.patching.selection import (
    Layer,
    by_energy,
    candidates,
    group_layers,
    is_running_stat,
    layer_energy,
    relative_energy,
    weights_only,
)
from rws.patching.selection import shallow as first_layers
from rws.patching.sparsify import check_density, check_method
from rws.patching.tensor import base_digest

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerDelta:
    """One layer's delta norms, for ``diff`` and energy selection: ``delta_l2``/``base_l2`` over
    all its tensors, ``stats_*`` over its BatchNorm running statistics alone (the rest are the
    weights: conv/linear, bias, BN affine)."""

    layer: str
    tensors: tuple[str, ...]
    delta_l2: float
    base_l2: float
    stats_delta_l2: float = 0.0
    stats_base_l2: float = 0.0

    @property
    def relative(self) -> float:
        """``‖δ‖/‖w‖`` over all the layer's tensors."""
        return _ratio(self.delta_l2, self.base_l2)

    @property
    def weights_delta_l2(self) -> float:
        """``‖δ‖`` without the running statistics."""
        return max(self.delta_l2**2 - self.stats_delta_l2**2, 0.0) ** 0.5

    @property
    def weights_base_l2(self) -> float:
        """``‖w‖`` without the running statistics."""
        return max(self.base_l2**2 - self.stats_base_l2**2, 0.0) ** 0.5

    @property
    def weights_relative(self) -> float:
        """``‖δ‖/‖w‖`` of the weights alone."""
        return _ratio(self.weights_delta_l2, self.weights_base_l2)

    @property
    def stats_relative(self) -> float:
        """``‖δ‖/‖w‖`` of the running statistics alone (0 for a layer without any)."""
        return _ratio(self.stats_delta_l2, self.stats_base_l2)


def _ratio(d: float, w: float) -> float:
    if w == 0.0:
        return 0.0 if d == 0.0 else float("inf")
    return d / w


def _open_pair(
    base: Source,
    tuned: Source,
    include: Sequence[str] | None,
    exclude: Sequence[str] | None,
    order: OrderSpec = None,
) -> tuple[Checkpoint, Checkpoint, list[str], DepthOrder]:
    b, t = open_checkpoint(base), open_checkpoint(tuned)
    live = next((m for m in (base, tuned) if isinstance(m, nn.Module)), None)
    if live is not None:  # the model inside torch.compile / DataParallel: no compiled pass
        live = unwrap_module(live)[0]
    depth = resolve_order(order, b, live)
    names = candidates(b, include=include, exclude=exclude, order=depth)
    for n in names:
        if n not in t:
            raise MissingTensorError(n, t.path, f"it is in {b.path}: not the same architecture")
        if tuple(t.shape(n)) != tuple(b.shape(n)):
            raise ShapeMismatchError(n, b.shape(n), t.shape(n))
    if not names:
        raise UsageError("no tensor matches the --include/--exclude patterns")
    return b, t, names, depth


def order_facts(order: DepthOrder, layers: Sequence[Layer], names: Sequence[str]) -> dict[str, Any]:
    """The provenance of a depth order: how it was obtained, how many layers it has, and the
    selectable tensors it could not place (kept last). The layers selected from it are recorded
    beside it (``selection["layers"]``); the rest of the order is not stored (it follows from the
    architecture, and on a one-layer patch of a ResNet-18 it was a third of the file)."""
    facts: dict[str, Any] = {"source": order.source, "count": len(layers)}
    missing = order.missing(names)
    if missing:
        facts["unplaced"] = missing
    return facts


def warn_guessed(source: str, base: Any) -> None:
    """Log that a depth selection rests on an order (its provenance ``source``) guessed from sorted
    names in ``base`` (a path or a provenance record)."""
    if source == GUESSED:
        path = base.get("path", "the base") if isinstance(base, Mapping) else base
        logger.warning(
            "%s stores its tensor names sorted: the depth order is guessed from the names and "
            "may pick the wrong layers; give the model (order=…, --arch, --order-from)",
            path,
        )


def layer_deltas(
    base: Source,
    tuned: Source,
    *,
    method: str = "delta",
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    order: OrderSpec = None,
    options: Any = None,
    **method_options: Any,
) -> list[LayerDelta]:
    """Per-layer ``‖δ‖`` and ``‖w‖`` in depth order (the profile ``rws diff`` shows), with the
    BatchNorm running statistics' share apart (:class:`LayerDelta`).

    Args:
        base, tuned: ``nn.Module``s, state dicts or checkpoint paths of one architecture.
        method: a registered method; ``options`` (its options dataclass) or keywords configure it.
        include, exclude: tensor-name globs.
        order: the depth order (see :func:`extract`).

    Returns:
        One :class:`LayerDelta` per layer, shallowest first.
    """
    m = get_method(method)
    opts = m.resolve_options(options, method_options)
    b, t, names, _ = _open_pair(base, tuned, include, exclude, order)
    delta_of, _ = m.prepare(b, t, opts)
    layers = group_layers(names, b.shape)
    energy = {n: relative_energy(delta_of(n), b.get(n)) for n in names}
    return [_layer_delta(layer, energy) for layer in layers]


def _layer_delta(layer: Layer, energy: Mapping[str, tuple[float, float]]) -> LayerDelta:
    d2 = sum(energy[n][0] for n in layer.tensors)
    w2 = sum(energy[n][1] for n in layer.tensors)
    stats = [n for n in layer.tensors if is_running_stat(n)]
    s_d2, s_w2 = sum(energy[n][0] for n in stats), sum(energy[n][1] for n in stats)
    return LayerDelta(layer.name, layer.tensors, d2**0.5, w2**0.5, s_d2**0.5, s_w2**0.5)


def extract(
    base: Source,
    tuned: Source,
    *,
    method: str = "delta",
    codec: str = "fp32",
    blocksize: int = codecs.DEFAULT_BLOCKSIZE,
    codec_map: CodecMapSpec = None,
    sparsify: str | None = None,
    density: float = 1.0,
    seed: int = 0,
    shallow: int | None = None,
    energy: float | None = None,
    running_stats: bool = False,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    order: OrderSpec = None,
    name: str = "",
    description: str = "",
    tags: Mapping[str, str] | None = None,
    options: Any = None,
    **method_options: Any,
) -> Patch:
    """Extract a patch that turns ``base`` into ``tuned`` on the selected tensors.

    Args:
        base, tuned: ``nn.Module``s, state dicts or checkpoint paths of one architecture.
        method: a registered method (``rws.list_methods()``).
        codec: ``fp32`` (default, lossless), ``fp16``, ``bf16``, ``int8``, ``bnb8``, ``nf4``,
            ``fp4``: stores the weight matrices and kernels; 1-D tensors and ones below 256
            elements stay in high precision (fp16 where exact enough, else fp32), recorded per
            tensor (:mod:`rws.patching.codec_map`).
        blocksize: elements per quantization block (int8/bnb8/nf4/fp4).
        codec_map: per-glob codecs overriding that, ``"bn*=fp32,layer1.*=int8"`` or a mapping;
            every glob must match a selected tensor.
        sparsify, density, seed: ``"topk"`` (largest magnitudes) or ``"dare"`` (seeded random
            drop, rescaled) keeping a ``density`` share of each large tensor's elements before
            the codec (:mod:`rws.patching.sparsify`).
        shallow: keep only the first K layers (conv/linear + bias + following norm layers).
        energy: keep the shallowest layers holding this fraction of the total ‖δ‖²/‖w‖², counted
            on weights: BatchNorm running statistics are left out of the count (they dominate
            BN models' deltas) unless ``running_stats=True``; a selected layer keeps them.
        running_stats: count running statistics in ``energy``'s selection.
        include, exclude: tensor-name globs applied before layer selection (and before the
            fixed tensors a method adds, e.g. ``bn="replace-all"``'s BatchNorm tensors).
        order: the depth order ``shallow`` and ``energy`` count in: a model (its forward pass,
            :func:`rws.patching.order.forward_order`), a :class:`~rws.patching.order.DepthOrder`,
            an order file (a checkpoint in definition order or a JSON list of names) or a list
            of names. Default: the forward pass of ``base`` (or ``tuned``) when it is a module,
            else the storage order, or a guess from the names when the file stores them sorted
            (logged as a warning). Recorded in ``provenance["selection"]["order"]``.
        name, description, tags: labels stored in the patch metadata.
        options: the method's options dataclass (e.g. ``RwsOptions(origin=w0)``); or give them
            as keywords (``origin=w0``), not both.

    Returns:
        The patch; tensors whose delta is exactly zero are not stored (``patch.skipped``).

    Raises:
        UsageError: an option the method does not take, a bad value, both selections given, a
            ``codec_map`` glob matching no tensor, a density outside (0, 1], a tensor name
            holding ``::``, a codec that cannot hold a delta.
        UnknownNameError: an unknown method or codec.

    Example:
        >>> patch = rws.extract(clean_model, tuned_model, codec="int8", shallow=3)  # doctest: +SKIP
    """
    if shallow is not None and energy is not None:
        raise UsageError("choose one of --shallow and --energy, not both")
    blockwise = codecs.get_codec(codec).blockwise
    plan = CodecPlan.of(codec, codec_map)  # checked before any work
    check_density(density)
    if sparsify is not None:
        check_method(sparsify)
    elif density != 1.0:
        raise UsageError(f"--density {density:g} goes with --sparsify topk|dare")
    m = get_method(method)
    opts = m.resolve_options(options, method_options)
    b, t, names, depth = _open_pair(base, tuned, include, exclude, order)
    delta_of, facts = m.prepare(b, t, opts)
    fixed = set(facts.pop("fixed", ())) & set(names)
    layers = group_layers(names, b.shape)
    ordered = order_facts(depth, layers, names)
    if shallow is not None or energy is not None:
        warn_guessed(depth.source, b.path)
    if shallow is not None:
        layers = first_layers(layers, shallow)
    elif energy is not None:
        e = {n: relative_energy(delta_of(n), b.get(n)) for n in names if n not in fixed}
        e = weights_only(e) if not running_stats else e
        scores = [layer_energy(layer, e) for layer in layers]
        layers = by_energy(layers, scores, energy)
    chosen = {n for layer in layers for n in layer.tensors} | fixed
    selected = [check_name(n) for n in names if n in chosen]
    plan.check(selected, {n: tuple(b.shape(n)) for n in selected})
    tensors, skipped = encode_deltas(
        ((n, delta_of(n), b.get(n)) for n in selected),
        codec=codec,
        blocksize=blocksize,
        fixed=fixed,
        codec_map=plan.overrides,
        sparsify=sparsify,
        density=density,
        seed=seed,
    )
    selection = {"include": list(include or []), "exclude": list(exclude or [])}
    selection.update({"shallow": shallow, "energy": energy, "layers": [la.name for la in layers]})
    selection["order"] = ordered
    if energy is not None and running_stats:
        selection["running_stats"] = True
    return Patch(
        tensors=tensors,
        kind=m.kind,
        scale=opts.scale,
        name=name,
        description=description,
        tags=dict(tags or {}),
        provenance=provenance(
            method=method,
            codec=codec,
            blocksize=blocksize if blockwise else None,
            codec_map=dict(plan.overrides) or None,
            sparsify={"method": sparsify, "density": density, "seed": seed} if sparsify else None,
            selection=selection,
            base=describe_source(base),
            tuned=describe_source(tuned),
            **facts,
        ),
        skipped=skipped,
        base={
            "numel": b.numel(),
            "tensors": len(b.keys()),
            "dtypes": _dtypes(b),
            "sha256": base_digest({n: t.base_sha256 or "" for n, t in tensors.items()}),
        },
    )


def _dtypes(ck: Checkpoint) -> dict[str, int]:
    out: dict[str, int] = {}
    for n in ck:
        key = str(ck.dtype(n)).removeprefix("torch.")
        out[key] = out.get(key, 0) + 1
    return out
