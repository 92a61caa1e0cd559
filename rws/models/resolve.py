"""Turn a model spec into a module: a registry name, ``module.path:factory``, ``timm:NAME`` or
``torchvision:NAME``; load weights into it and check that it takes the data's images."""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from rws.errors import CheckpointError, UsageError
from rws.io.checkpoint import open_checkpoint
from rws.models.external import timm_model, torchvision_model
from rws.models.normalization import self_normalising_keys, set_normalization
from rws.models.registry import create_model, get_model
from rws.runtime.modes import eval_mode

logger = logging.getLogger(__name__)

_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_EXTERNAL = {"timm": timm_model, "torchvision": torchvision_model}


def resolve_model(
    spec: str,
    num_classes: int = 10,
    *,
    img_size: int | None = None,
    normalize: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build the model a spec names; every built-in model takes images in [0, 1].

    Args:
        spec: a registered name (``"resnet18"``, see ``list_models()``);
            ``"pkg.module:factory"``, a callable imported from the user's code and called as
            ``factory(num_classes=…, **kwargs)`` (it should normalise its own inputs);
            ``"timm:NAME"`` or ``"torchvision:NAME"``, a model of that package (installed
            separately) wrapped to normalise [0, 1] inputs (timm: its pretrained config's
            mean/std; torchvision: ImageNet's).
        num_classes: size of the output layer.
        img_size: input side for models whose shape depends on it (timm ``img_size``,
            torchvision ``image_size``); ignored by the built-in convolutional models, which
            take any size. The spec itself may carry options after commas
            (``"timm:NAME,img_size=64,normalize=none,drop_rate=0.1"``, see :func:`split_spec`):
            ``num_classes``, ``img_size`` and ``normalize`` there override the arguments.
        normalize: input statistics the model applies (see :mod:`rws.models.normalization`):
            ``None`` keeps the model's default, ``"none"`` removes them.
        **kwargs: passed on to the factory.

    Returns:
        The model, in training mode, on the CPU.

    Raises:
        UnknownNameError: for a plain name that is not registered (the message lists the choices).
        UsageError: a factory that cannot be imported or called, a missing package or model,
            keyword arguments the factory does not take, or a bad ``normalize``.

    Example:
        >>> model = resolve_model("resnet20", num_classes=10)
    """
    spec, options = split_spec(spec)
    for key in ("num_classes", "img_size", "normalize"):
        if key in options:
            value = options.pop(key)
            num_classes = value if key == "num_classes" else num_classes
            img_size = value if key == "img_size" else img_size
            normalize = str(value) if key == "normalize" else normalize
    clash = sorted(set(options) & set(kwargs))
    if clash:
        raise UsageError(f"model {spec!r}: {', '.join(clash)} given both in the spec and apart")
    kwargs = {**options, **kwargs}
    kind, sep, name = spec.partition(":")
    if sep and kind in _EXTERNAL:
        model = _EXTERNAL[kind](spec, name, num_classes, img_size, **kwargs)
    elif sep:
        model = _user_model(spec, num_classes, **kwargs)
    else:
        _check_accepts(spec, get_model(spec), "num_classes", *kwargs)
        try:
            model = create_model(spec, num_classes=num_classes, **kwargs)
        except TypeError as exc:  # a keyword the class behind a **kwargs factory does not take
            raise UsageError(f"model {spec!r}: {exc}") from None
    return set_normalization(model, normalize, what=f"model {spec!r}")


def split_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"timm:vit_tiny_patch16_224,img_size=64,normalize=none"`` → the model name and its
    options (``KEY=VALUE`` items after the first comma, read as :func:`parse_model_kw` does;
    commas inside brackets belong to the value).

    Raises:
        UsageError: an option that is not ``KEY=VALUE``.
    """
    name, sep, rest = spec.partition(",")
    if not sep:
        return spec, {}
    items, depth, cur = [], 0, ""
    for ch in rest:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    items.append(cur)
    return name.strip(), parse_model_kw(items)


def model_spec(
    arch: str,
    *,
    img_size: int | None = None,
    normalize: str | None = None,
    num_classes: int | None = None,
    model_kw: Sequence[str] | None = None,
) -> str:
    """``arch`` with the given options folded into its spec (see :func:`split_spec`), so the
    options travel wherever the spec goes (provenance, ``--order-from``, later runs).

    Example:
        >>> model_spec("timm:vit_tiny_patch16_224", img_size=64, model_kw=["drop_rate=0.1"])
        'timm:vit_tiny_patch16_224,img_size=64,drop_rate=0.1'
    """
    extra = [f"img_size={img_size}"] if img_size is not None else []
    extra += [f"normalize={normalize.replace(',', ';')}"] if normalize is not None else []
    extra += [f"num_classes={num_classes}"] if num_classes is not None else []
    extra += list(model_kw or ())
    parse_model_kw(extra)  # checked here, once
    return ",".join([arch, *extra])


def parse_model_kw(items: Sequence[str] | None) -> dict[str, Any]:
    """``["depth=12", "drop_rate=0.1", "name=x"]`` → keyword arguments; values are read as JSON
    where they parse (numbers, booleans, lists) and kept as strings otherwise.

    Raises:
        UsageError: an item without ``=`` or with an empty or non-identifier key.
    """
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise UsageError(f"--model-kw {item!r}: expected KEY=VALUE with a Python-name key")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def _user_model(spec: str, num_classes: int, **kwargs: Any) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    if not _DOTTED.match(module_name) or not _DOTTED.match(attr):
        raise UsageError(
            f"model {spec!r}: expected a registered name, 'package.module:factory' or 'timm:NAME'"
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"model {spec!r}: cannot import module {module_name!r} ({exc})") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"model {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UsageError(f"model {spec!r}: {attr!r} is not callable")
    _check_accepts(spec, obj, "num_classes", *kwargs)
    model = obj(num_classes=num_classes, **kwargs)
    if not isinstance(model, nn.Module):
        raise UsageError(
            f"model {spec!r}: the factory returned {type(model).__name__}, not a torch.nn.Module"
        )
    logger.debug("built user model %s (%s)", spec, type(model).__name__)
    return model


def _check_accepts(spec: str, factory: Callable[..., Any], *names: str) -> None:
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return
    try:
        sig.bind_partial(**dict.fromkeys(names))
    except TypeError:
        raise UsageError(
            f"model {spec!r}: the factory must accept keyword arguments {', '.join(names)}"
        ) from None


def load_model(
    arch: str,
    weights: str | os.PathLike,
    num_classes: int,
    *,
    input_shape: Sequence[int] | None = None,
    normalize: str | None = None,
    img_size: int | None = None,
    model_kw: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Build ``arch`` and load ``weights`` (any checkpoint rws reads) into it, strictly, in eval mode.

    ``input_shape`` (``(C, H, W)`` of the data) is checked with one dummy forward pass;
    ``normalize``, ``img_size`` and ``model_kw`` go to :func:`resolve_model`.

    Raises:
        CheckpointError: the checkpoint's tensor names or shapes do not fit the architecture.
        UsageError: the model does not take ``input_shape`` images.
    """
    model = resolve_model(
        arch, num_classes=num_classes, img_size=img_size, normalize=normalize, **(model_kw or {})
    )
    ck = open_checkpoint(weights)
    state = {k: ck.get(k).clone() for k in ck}
    stored = self_normalising_keys(state)
    if stored and normalize is None:
        logger.warning(
            "%s holds input statistics (%s): its weights may normalise their own inputs; "
            "if accuracy is low, try --normalize none",
            ck.path, ", ".join(stored),
        )  # fmt: skip
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:2])[:300]
        hint = f"; it stores input statistics ({', '.join(stored)})" if stored else ""
        raise CheckpointError(ck.path, f"does not fit --arch {arch} ({detail}){hint}") from None
    model.eval()
    if input_shape is not None:
        check_input_size(model, input_shape, what=f"model {arch!r}")
    return model


def check_input_size(model: nn.Module, input_shape: Sequence[int], *, what: str = "model") -> None:
    """Run one forward pass on a zero batch of ``input_shape`` (``(C, H, W)``); a shape error
    becomes a one-line usage error naming the size (BatchNorm statistics are left untouched).

    Raises:
        UsageError: the model cannot take such images.
    """
    shape = tuple(int(d) for d in input_shape)
    try:
        param = next(model.parameters())
        device, dtype = param.device, param.dtype if param.is_floating_point() else torch.float32
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32
    x = torch.zeros((1, *shape), device=device, dtype=dtype)
    try:
        with torch.no_grad(), eval_mode(model):
            model(x)
    except (RuntimeError, ValueError, AssertionError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        size = "×".join(str(d) for d in shape)
        raise UsageError(
            f"{what} does not take {size} inputs ({first}); pass --img-size to match the data "
            "or choose a model built for this size"
        ) from None
