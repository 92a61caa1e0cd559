"""``rws``: Robust Weight Signatures (Cai, Zhang, Wang, ICML 2023).

Checkpoints: an origin ``W0``, a clean model ``Wc`` fine-tuned from it on clean data (the patch's
base) and one or more robust models ``Wk`` fine-tuned from it on one corruption. Per tensor,
flattened, in float64, with ``dk = Wk − W0`` and ``dc = Wc − W0``::

    RWSk = dk − (⟨dk, dc⟩ / ⟨dc, dc⟩)·dc        (dk without its component along dc)

**What the patch stores** is ``RWS = mean_k RWSk`` itself, so that applying it at scale α gives the
paper's ``W = Wc + α·RWS``: the signature is added to the clean weights, not to ``W0``. It is *not*
``Wk − Wc`` (which is ``dk − dc``): the clean fine-tuning direction is removed from ``dk``, not
subtracted in full. The mean over several robust models of one corruption is the paper's
``Σk αk·RWSk`` with ``αk = α/|k|``, applied once (the reference multiplies by ``αk`` twice, an
effective ``(α/|k|)²``; this module does not copy that). Without an origin the robust model is taken
to be fine-tuned from the clean one: ``W0 = Wc``, ``dc = 0`` and the signature is the plain delta
``Wk − Wc`` (facts record ``"projection": false``). Where ``dc = 0`` for one tensor (the clean
fine-tune left it unchanged) nothing is projected out of it.

BatchNorm tensors (the 1-D float tensors of a module that has a ``running_mean``).

**Coupling.** On BatchNorm models the conv/linear deltas and the BN tensors work only together:
the convs of a robust model are fine-tuned against *its* BN statistics and affine parameters.
Measured on ``rws demo``'s small-cnn (issue 12): a signature of the conv deltas alone, or of the
BN tensors alone, drops clean accuracy to 10–24 %; the coupled conv+BN pair is what works. The
running statistics also dominate the signature's norm (59–66 % of ‖RWS‖²), which is why
``--energy``, ``rws similarity`` and ``rws identify`` leave them out by default. The modes:

- ``average`` (default; the reference's handling within the selected layers): the robust models'
  BN tensors are averaged and *replace* the clean ones; stored as the delta ``mean_k Wk − Wc``,
  so α = 1 replaces and α < 1 interpolates. BN layers outside ``--shallow``/``--energy``'s
  selection keep the clean model's tensors.
- ``replace-all`` (the reference's scope: its ``decompose`` replaces every BN tensor of the
  network, whatever ``keep_num``): every BN tensor (weight, bias, running mean and variance), in
  the selected layers or not, is replaced by the robust models' average at full weight whatever
  α — stored as ``mean_k Wk − Wc`` with the *fixed* marker (:mod:`rws.patching.tensor`), so the
  patch's scale moves the conv/linear signature only. (The reference's key match,
  ``'bn' in key or 'downsample' in key``, also averages ResNet shortcut convs; this mode takes
  BatchNorm tensors only.)
- ``delta``: projected like every other tensor.
- ``skip``: a zero delta, which the pipeline drops (listed in ``patch.skipped``).

After patching, ``rws apply --recalibrate-bn DATA`` re-estimates the running statistics on
corrupted data, replacing them or mixing them with the patched ones by α
(:mod:`rws.training.recalibrate`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from rws.errors import MissingTensorError, ShapeMismatchError, UsageError
from rws.io.checkpoint import Checkpoint, Source, describe_source, open_checkpoint
from rws.methods.registry import DeltaFn, NoOptions, register_method
from rws.patching.arith import compute_dtype, exact_delta
from rws.patching.selection import module_of

BN_MODES = ("average", "replace-all", "delta", "skip")
BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var")
BnMode = Literal["average", "replace-all", "delta", "skip"]
_REPLACING = ("average", "replace-all")


def batchnorm_tensors(ck: Checkpoint) -> set[str]:
    """Names of the BatchNorm tensors of a checkpoint: the ``weight``, ``bias``, ``running_mean``
    and ``running_var`` (1-D) of every module that has a ``running_mean``."""
    keys = ck.keys()
    modules = {module_of(n) for n in keys if n.endswith(".running_mean")}
    return {
        n
        for n in keys
        if module_of(n) in modules and n.rsplit(".", 1)[-1] in BN_SUFFIXES and len(ck.shape(n)) == 1
    }


def projection_out(dk: torch.Tensor, dc: torch.Tensor) -> torch.Tensor:
    """``dk − (⟨dk,dc⟩/⟨dc,dc⟩)·dc`` over the flattened tensors, in float64 (``dk`` if ``dc = 0``).

    Example:
        >>> projection_out(torch.tensor([1.0, 1.0]), torch.tensor([2.0, 0.0])).tolist()
        [0.0, 1.0]
    """
    a = dk.detach().to(torch.float64).flatten()
    c = dc.detach().to(torch.float64).flatten()
    cc = float(torch.dot(c, c))
    if cc == 0.0:
        return a.reshape(dk.shape)
    return (a - (float(torch.dot(a, c)) / cc) * c).reshape(dk.shape)


def _as_sources(robust: Source | Sequence[Source] | None) -> list[Source]:
    if robust is None:
        return []
    single = (str, os.PathLike, Mapping, nn.Module, Checkpoint)
    if isinstance(robust, single):
        return [robust]
    return list(robust)


def _fetch(ck: Checkpoint, name: str, shape: tuple[int, ...], role: str) -> torch.Tensor:
    if name not in ck:
        hint = (
            f"the {role} is not the same architecture; narrow the selection (--shallow, --exclude)"
        )
        raise MissingTensorError(name, ck.path, hint)
    if tuple(ck.shape(name)) != tuple(shape):
        raise ShapeMismatchError(name, shape, tuple(ck.shape(name)))
    return ck.get(name)


@dataclass(frozen=True)
class RwsOptions(NoOptions):
    """Options of ``rws``.

    Attributes:
        origin: the shared start ``W0`` of the clean and robust models; None means the robust
            model was fine-tuned from the clean one (no projection: the plain delta).
        robust: more robust models of the same corruption (a source or a sequence of sources,
            stored as a tuple); the signature is the mean over all of them.
        bn: BatchNorm handling: ``average``, ``replace-all``, ``delta`` or ``skip`` (see the
            module doc).

    Raises:
        UsageError: an unknown ``bn`` mode.
    """

    labels: ClassVar[dict[str, str]] = {"robust": "more than one TUNED checkpoint"}

    origin: Source | None = None
    robust: Source | Sequence[Source] | None = ()
    bn: BnMode = "average"

    def __post_init__(self) -> None:
        if self.bn not in BN_MODES:
            raise UsageError(f"--bn {self.bn!r}: choose one of {', '.join(BN_MODES)}")
        object.__setattr__(self, "robust", tuple(_as_sources(self.robust)))


@register_method(
    "rws",
    kind="rws",
    options=RwsOptions,
    summary="Robust Weight Signature: robust − origin, clean direction projected out",
    url="https://arxiv.org/abs/2302.12480",
)
def prepare_rws(
    base: Checkpoint, tuned: Checkpoint, options: RwsOptions
) -> tuple[DeltaFn, dict[str, Any]]:
    """Robust Weight Signature of ``tuned`` (robust) against ``base`` (clean); see the module doc.

    Args:
        base: the clean model ``Wc`` (the checkpoint the patch is applied to).
        tuned: a robust model ``Wk`` fine-tuned from the origin on one corruption.
        options: origin, more robust models and the BatchNorm mode (:class:`RwsOptions`).

    Returns:
        ``(delta_of, facts)``: ``delta_of(name)`` is the signature of one tensor (compute dtype of
        the base tensor); facts are ``projection``, ``bn``, ``origin`` and ``robust``, and with
        ``bn="replace-all"`` ``fixed``: every BN tensor, for :func:`rws.extract` to add to any
        selection as fixed tensors.

    Raises:
        MissingTensorError, ShapeMismatchError: (when a tensor is asked for) the origin or an
            extra robust model lacks it or has another shape.
    """
    origin, bn = options.origin, options.bn
    w0 = open_checkpoint(origin) if origin is not None else None
    models = [tuned, *(open_checkpoint(s) for s in options.robust)]
    bn_names = batchnorm_tensors(base)

    def delta_of(name: str) -> torch.Tensor:
        wc = base.get(name)
        shape = tuple(wc.shape)
        cd = compute_dtype(wc.dtype)
        if name in bn_names and bn == "skip":
            return torch.zeros(shape, dtype=cd)
        wks = [_fetch(m, name, shape, "robust model") for m in models]
        replacing = name in bn_names and bn in _REPLACING
        if len(wks) == 1 and (w0 is None or replacing):
            return exact_delta(wc, wks[0])  # bit-exact Wk − Wc (plain delta or BN replacement)
        mean_wk = torch.stack([w.detach().to(torch.float64) for w in wks]).mean(0)
        if w0 is None or replacing:
            return (mean_wk - wc.detach().to(torch.float64)).to(cd)
        w0t = _fetch(w0, name, shape, "origin").detach().to(torch.float64)
        # projection is linear in dk, so mean_k RWSk = RWS of mean_k dk
        return projection_out(mean_wk - w0t, wc.detach().to(torch.float64) - w0t).to(cd)

    facts = {
        "projection": w0 is not None,
        "bn": bn,
        "origin": describe_source(w0) if w0 is not None else None,
        "robust": [describe_source(m) for m in models],
        "signature": "mean over robust models of dk − (<dk,dc>/<dc,dc>)·dc; patch W = Wc + α·RWS",
    }
    if bn == "replace-all":
        facts["fixed"] = sorted(bn_names)
    trained = _training_facts(tuned)  # arch, data, corruption … when `rws finetune` made it
    if trained:
        facts["trained"] = trained
    return delta_of, facts


def _training_facts(ck: Checkpoint) -> dict[str, Any]:
    """What ``rws finetune`` recorded about how a robust checkpoint was trained (or nothing)."""
    raw = ck.metadata.get("rws.finetune") if ck.metadata else None
    try:
        meta = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        return {}
    keys = ("arch", "data", "corruptions", "severity", "epochs", "seed")
    return {k: meta[k] for k in keys if isinstance(meta, dict) and k in meta}
