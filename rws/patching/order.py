"""Depth order: which tensors a network uses first, taken from its computation where it is known.

``--shallow K`` and ``--energy F`` count layers from the input. Storage order is definition order
for state dicts, pickles and files rws writes, but definition order is not the computation's (a
ViT defines ``cls_token`` and ``head`` before its blocks), and writers that sort names
(``safetensors.save_file``, every Hub upload) keep no order at all. :func:`forward_order` runs
one forward pass and orders the tensors by first use; :func:`order_from_file` reads an order from
a reference checkpoint or a JSON list; :func:`checkpoint_order` is the fallback on files alone.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from rws.errors import CheckpointError, InputFileError, UsageError
from rws.io.checkpoint import Checkpoint, open_checkpoint
from rws.io.hub_fetch import resolve_path
from rws.runtime.modes import eval_mode

logger = logging.getLogger(__name__)

STORAGE = "storage order"
GUESSED = "guessed from names"
DEFAULT_SIDE = 32  # image side of a guessed example input (the built-in models are CIFAR-sized)

OrderSpec = Union["DepthOrder", nn.Module, str, os.PathLike, Sequence[str], None]


@dataclass(frozen=True)
class DepthOrder:
    """Tensor names shallowest first, how the order was obtained (``source``), and the names it
    holds only at the end because the forward pass never reached them (``unreached``)."""

    names: tuple[str, ...]
    source: str
    unreached: tuple[str, ...] = ()

    @property
    def guessed(self) -> bool:
        """True when the order was guessed from sorted names, not read or measured."""
        return self.source == GUESSED

    def sort(self, names: Sequence[str]) -> list[str]:
        """``names`` in this order; names it does not hold go last, in their given order."""
        rank = {n: i for i, n in enumerate(self.names)}
        known = sorted((n for n in names if n in rank), key=rank.__getitem__)
        return known + [n for n in names if n not in rank]

    def missing(self, names: Sequence[str]) -> list[str]:
        """Those of ``names`` the order does not place: unreached or not in it at all."""
        held, late = set(self.names), set(self.unreached)
        return [n for n in names if n not in held or n in late]


# --- the computation's order ---------------------------------------------------------------------


class _FirstUse(TorchFunctionMode):
    """Records the step at which each watched tensor first enters a torch function."""

    def __init__(self, watched: Mapping[int, list[str]], clock: Callable[[], int]) -> None:
        super().__init__()
        self.watched, self.clock = watched, clock
        self.first: dict[str, int] = {}

    def __torch_function__(
        self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        step = None  # one step per call: a call's tensors keep their storage order among them
        for t in _tensors((args, kwargs)):
            for name in self.watched.get(id(t), ()):
                if name not in self.first:
                    step = self.clock() if step is None else step
                    self.first[name] = step
        return func(*args, **kwargs)


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, list | tuple):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


@contextmanager
def _entry_hooks(model: nn.Module, entered: dict[str, int], clock: Callable[[], int]) -> Iterator:
    """Forward pre-hooks on every module recording when each (by all its names) is first entered."""
    names: dict[int, list[str]] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        names.setdefault(id(m), []).append(name)

    def hook(module: nn.Module, args: Any) -> None:
        for name in names.get(id(module), ()):
            entered.setdefault(name, clock())

    with ExitStack() as stack:
        for m in model.modules():
            stack.callback(m.register_forward_pre_hook(hook).remove)
        yield


def example_inputs(model: nn.Module) -> list[tuple[int, ...]]:
    """Guessed input shapes for ``model``, likeliest first: a timm model's
    ``pretrained_cfg["input_size"]``; else one per conv (``in_channels`` × 32 × 32 …, 3-channel
    convs first) and then per linear layer (``in_features``), in definition order."""
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, Mapping) and cfg.get("input_size"):
        return [(1, *(int(s) for s in cfg["input_size"]))]
    convs: list[tuple[int, ...]] = []
    linears: list[tuple[int, ...]] = []
    for m in model.modules():
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            convs.append((1, m.in_channels, *[DEFAULT_SIDE] * (m.weight.dim() - 2)))
        elif isinstance(m, nn.Linear):
            linears.append((1, m.in_features))
    convs.sort(key=lambda s: s[1] != 3)  # stable: definition order within each group
    return list(dict.fromkeys(convs + linears))


def forward_order(
    model: nn.Module,
    example: torch.Tensor | Sequence[int] | None = None,
    *,
    source: str | None = None,
) -> DepthOrder:
    """The model's state-dict names ordered by first use in one forward pass.

    The pass runs in eval mode under ``torch.no_grad``; every submodule gets its own mode back and
    every hook is removed, also when the pass fails. A tensor's position is its first use as an
    argument of a torch function (a conv's weight in ``conv2d``, a ViT's ``cls_token`` where the
    parent's forward concatenates it, after the patch embedding); the tensors of one call keep
    their storage order. Tensors the pass enters but never uses (``num_batches_tracked`` in eval
    mode) follow their module's last used tensor, or sit at the module's entry (a forward
    pre-hook) if it used none; tensors of modules never entered go last, in storage order, and
    are listed in ``unreached``.

    Args:
        model: the network.
        example: an input tensor, or a shape to fill with 0.5 (dtype and device of the model's
            first floating parameter); None tries the guessed shapes of :func:`example_inputs`
            until one runs.
        source: how the order is labelled (default ``"forward pass of <class name>"``).

    Raises:
        UsageError: no shape can be guessed, or the forward pass fails on the example (on every
            guessed shape: the first failure is reported).
    """
    label = source or f"forward pass of {type(model).__name__}"
    if example is not None:
        return _pass(model, _example(model, example), label)
    shapes = example_inputs(model)
    if not shapes:
        raise UsageError(f"{label}: cannot guess an input shape; give an example input")
    failures: list[UsageError] = []
    for shape in shapes:
        try:
            return _pass(model, _example(model, shape), label)
        except UsageError as exc:
            failures.append(exc)
    raise failures[0]


def _pass(model: nn.Module, x: torch.Tensor, label: str) -> DepthOrder:
    state = model.state_dict(keep_vars=True)
    watched: dict[int, list[str]] = {}
    for name, t in state.items():
        if isinstance(t, torch.Tensor):
            watched.setdefault(id(t), []).append(name)
    steps = iter(range(1 << 62))
    entered: dict[str, int] = {}
    recorder = _FirstUse(watched, lambda: next(steps))
    try:
        hooks = _entry_hooks(model, entered, lambda: next(steps))
        with eval_mode(model), torch.no_grad(), hooks, recorder:
            model(x)
    except Exception as exc:  # any failure of user code: one line, the pass's cause
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise UsageError(f"{label} failed on an input of shape {tuple(x.shape)}: {detail}") from exc
    return _ordered(list(state), recorder.first, entered, label)


def _example(model: nn.Module, example: torch.Tensor | Sequence[int]) -> torch.Tensor:
    if isinstance(example, torch.Tensor):
        return example
    ref = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = ref.dtype if ref is not None else torch.float32
    return torch.full(
        tuple(example), 0.5, dtype=dtype, device=ref.device if ref is not None else "cpu"
    )


def _ordered(
    storage: list[str], first: Mapping[str, int], entered: Mapping[str, int], label: str
) -> DepthOrder:
    rank = {n: i for i, n in enumerate(storage)}
    last_use: dict[str, int] = {}
    for n, step in first.items():
        owner = _owner(n)
        last_use[owner] = max(step, last_use.get(owner, -1))
    keys: dict[str, tuple[int, int, int]] = {}
    unreached: list[str] = []
    for n in storage:
        owner = _owner(n)
        if n in first:
            keys[n] = (first[n], 0, rank[n])
        elif owner in last_use or owner in entered:
            keys[n] = (last_use.get(owner, entered.get(owner, 0)), 1, rank[n])
        else:
            unreached.append(n)
    reached = sorted(keys, key=keys.__getitem__)
    if unreached:
        logger.info("%s: %d tensors never reached (kept last): %s", label, len(unreached),
                    ", ".join(unreached[:5]) + (", …" if len(unreached) > 5 else ""))  # fmt: skip
    return DepthOrder(tuple(reached + unreached), label, tuple(unreached))


def _owner(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


# --- orders from files and from the checkpoint itself --------------------------------------------


def looks_sorted(
    names: Sequence[str], dtype_of: Callable[[str], torch.dtype] | None = None
) -> bool:
    """True when the names are in alphabetical order within each dtype, as ``safetensors.save_file``
    writes them: the file keeps no definition order."""
    groups: dict[object, list[str]] = {}
    for n in names:  # safetensors groups tensors by dtype, then sorts each group by name
        groups.setdefault(dtype_of(n) if dtype_of else None, []).append(n)
    return len(names) > 2 and all(g == sorted(g) for g in groups.values())


_NUM = re.compile(r"^(.*?)(\d+)$")
_NORM = ("bn", "norm", "ln", "gn")
_BLOCK = ("layer", "block", "stage", "blocks", "layers", "h")


def _part_key(part: str) -> tuple[float, int, str]:
    """Sort key of one dotted name part: its number, then conv/linear < norm < block, then text."""
    if part.isdigit():
        return (int(part), 0, "")
    m = _NUM.match(part)
    stem, num = (m.group(1), int(m.group(2))) if m else (part, float("inf"))
    low = stem.lower()
    role = 2 if low in _BLOCK else 1 if any(low.startswith(n) for n in _NORM) else 0
    return (num, role, stem)


def natural_key(name: str) -> tuple[tuple[float, int, str], ...]:
    """Heuristic depth key for names stored in alphabetical order (``conv1 < bn1 < layer1 < fc``)."""
    return tuple(_part_key(p) for p in name.split("."))


def checkpoint_order(ck: Checkpoint) -> DepthOrder:
    """The order a checkpoint's storage gives: its storage order, or, when its names are sorted, a
    guess from the names (:func:`natural_key`), labelled :data:`GUESSED`."""
    names = ck.keys()
    if looks_sorted(names, ck.dtype):
        return DepthOrder(tuple(sorted(names, key=natural_key)), GUESSED)
    return DepthOrder(tuple(names), STORAGE)


def order_from_file(path: str | os.PathLike) -> DepthOrder:
    """The order in a file (or ``hf://`` reference): a ``.json`` list of tensor names, or a
    checkpoint's storage order (one written in definition order: ``torch.save``, rws's own files).

    Raises:
        InputFileError: no such file.
        CheckpointError: a JSON file that is not a list of names, or an unreadable checkpoint.
    """
    p = Path(resolve_path(path))  # an hf:// reference: fetched through the Hugging Face cache
    if not p.is_file():
        raise InputFileError(
            p, "no such file (an order file: a checkpoint or a JSON list of names)"
        )
    if p.suffix.lower() == ".json":
        try:
            names = json.loads(p.read_text())
        except (OSError, ValueError, RecursionError) as exc:  # crafted JSON too
            raise CheckpointError(p, f"not a JSON list of tensor names ({exc})") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise CheckpointError(p, "not a JSON list of tensor names")
        return DepthOrder(tuple(names), f"name list {p.name}")
    with open_checkpoint(p) as ck:
        names = ck.keys()
        if looks_sorted(names, ck.dtype):
            logger.warning(
                "%s: its tensor names are sorted, so its storage order is no depth order; use a "
                "checkpoint saved with torch.save or a JSON list",
                p.name,
            )
        return DepthOrder(tuple(names), f"storage order of {p.name}")


def resolve_order(spec: OrderSpec, ck: Checkpoint, live: nn.Module | None = None) -> DepthOrder:
    """The depth order for ``ck``: ``spec`` (a :class:`DepthOrder`, a model whose forward pass
    gives it, an order file, or a list of names), else ``live``'s forward pass (falling back to the
    storage order if the pass fails on a guessed input), else :func:`checkpoint_order`.

    Raises:
        UsageError: ``spec`` shares no tensor name with ``ck``; a model ``spec`` whose pass fails.
    """
    if spec is None and live is not None:
        try:
            return forward_order(live)
        except UsageError as exc:
            logger.warning("%s; depth order is the storage order (pass order=…)", exc)
            return checkpoint_order(ck)
    if spec is None:
        return checkpoint_order(ck)
    if isinstance(spec, DepthOrder):
        order = spec
    elif isinstance(spec, nn.Module):
        order = forward_order(spec)
    elif isinstance(spec, str | os.PathLike):
        order = order_from_file(spec)
    else:
        order = DepthOrder(tuple(spec), "given name list")
    names = ck.keys()
    if names and not set(order.names) & set(names):
        raise UsageError(f"order ({order.source}): none of its tensor names is in {ck.path}")
    return order
