"""``rws.Router``: recognise each batch's shift and serve it with the matching signature.

``router(x)`` (1) computes the batch's features and the detector's class probabilities (``none``
or one signature's corruption) on the unpatched model, (2) writes the chosen signature (hard
mode: the most probable class; soft mode: every signature weighted by its probability, a
composed patch per batch) into the model's tensors in place, (3) runs the model and (4) writes the
saved tensors back, bit for bit, before returning the logits. Nothing is copied but the touched
tensors (the signatures' layers). ``router.last`` says what was chosen, with what confidence and
how long each step took.

Thread safety: one lock serialises whole calls (detection, patch, forward, restore), because the
patched weights are shared state; concurrent callers wait for each other, and nothing else may use
the model while a call runs. Under ``torch.enable_grad()`` (attacks) the patched tensors are
passed to ``torch.func.functional_call`` instead of written in place, so gradients flow through
the patched model and the stored weights never change; the route itself is not differentiated.
The detector runs on the model as it was when the router was built (fingerprints are checked
then): do not change the model's weights while routing it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from rws.errors import BaseMismatchError, BatchMismatchError, MissingTensorError, UsageError
from rws.io.unwrap import unwrap_module
from rws.patching.ops import apply
from rws.recipes.extract import search_settings
from rws.recipes.operating_point import search_operating_point
from rws.recipes.validation import validation_split
from rws.routing.detector import Detector, fit_detector, training_batches
from rws.routing.library import NONE, Entry, LibraryArg, resolve_library
from rws.runtime.modes import eval_mode

logger = logging.getLogger(__name__)

__all__ = ["MODES", "Route", "Router"]

MODES = ("hard", "soft")


@dataclass(frozen=True)
class Route:
    """What one call chose: ``choice`` (a corruption or ``"none"``), its probability
    (``confidence``), every class's probability, the coefficient applied per signature, whether
    the detector rejected the batch as unlike every class, and seconds per step."""

    choice: str
    confidence: float
    probabilities: Mapping[str, float]
    weights: Mapping[str, float]
    rejected: bool = False
    detect_s: float = 0.0
    patch_s: float = 0.0
    forward_s: float = 0.0

    @property
    def overhead_s(self) -> float:
        """Seconds spent on routing (detection, patching, restoring), not on the forward."""
        return self.detect_s + self.patch_s


def _labelled(data: Any) -> Any:
    if isinstance(data, torch.Tensor):
        raise UsageError(
            "validation data: images without labels; a router learns from labelled data: "
            "data=(x_val, y_val), a dataset spec such as 'digits' or a DataLoader of (x, y)"
        )
    return validation_split(data)


class Router(nn.Module):
    """A model that routes each batch to the signature its shift calls for (see the module doc).

    Args:
        model: the model the signatures were extracted for (its tensors are patched in place).
        library: ``(patch, corruption)`` pairs, patches tagged with their corruption, paths or
            ``hf://`` references to patch files, or a library folder.
        data: labelled validation data (a dataset spec, ``(x, y)``, a DataLoader): the detector
            learns from corrupted copies of its images; with ``scales="auto"`` the α search too.
        detector: ``"input"`` (image statistics + logistic regression), ``"activation"`` (the
            first BatchNorm layers' per-channel statistics + nearest centroid), ``"prototype"``
            (Arrow-style weight prototypes + nearest centroid), or a fitted :class:`Detector`.
        head: override the detector's classifier (``logistic`` or ``centroid``).
        mode: ``hard`` (one signature or none per batch) or ``soft`` (probability-weighted mix).
        scales: ``"patch"`` (each patch's own scale), ``"auto"`` (each signature's α searched on
            ``data`` for its own corruption, ``max_clean_drop`` points of clean budget or none),
            or a mapping corruption → scale.
        search: (``scales="auto"``) more keywords of :func:`rws.recipes.extract.search_settings`
            (``grid``, ``refine``, ``copy`` (default ``cycled``) …).
        negatives: corruptions with no signature whose batches are taught as ``none``.
        threshold: (hard) a signature is chosen only with at least this probability.
        reject: quantile of the training distances beyond which a batch is ``none`` (None: off).
        depth: (activation) BatchNorm layers probed.
        fit_batches, fit_batch_size, severity, seed: the detector's training batches.
        input_shape: (C, H, W) of the batches (default: the validation images').
        force, clamp_var: as in :func:`rws.apply` (fingerprint mismatches; running variances).

    Raises:
        UsageError: an empty library, data without labels, bad options. BaseMismatchError: a
            signature made for another base. MissingTensorError, ShapeMismatchError: another
            architecture.
    """

    def __init__(
        self, model: nn.Module, library: LibraryArg, data: Any = None, *,
        detector: str | Detector = "input", head: str | None = None, mode: str = "hard",
        scales: str | Mapping[str, float] = "patch", max_clean_drop: float | None = None,
        search: Mapping[str, Any] | None = None,
        negatives: Sequence[str] = (), threshold: float = 0.0, reject: float | None = 0.99,
        depth: int = 2, fit_batches: int = 48, fit_batch_size: int = 32,
        severity: tuple[int, int] = (1, 5), seed: int = 0,
        input_shape: Sequence[int] | None = None, force: bool = False, clamp_var: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        if mode not in MODES:
            raise UsageError(f"unknown routing mode {mode!r}; choose one of: {', '.join(MODES)}")
        self.model, self.mode, self.threshold = model, mode, float(threshold)
        self.force, self.clamp_var = force, clamp_var
        entries = resolve_library(library)
        split = _labelled(data) if data is not None else None
        if split is None and not isinstance(detector, Detector):
            raise UsageError("a router learns from labelled validation data: data=(x_val, y_val)")
        opts = {"max_clean_drop": max_clean_drop, "seed": seed, "copy": "cycled", **(search or {})}
        self.entries = self._scaled(entries, scales, split, opts)
        self._check_bases()
        shape = input_shape if input_shape is not None else tuple(split.x.shape[1:])  # type: ignore[union-attr]
        self.input_shape = tuple(int(s) for s in shape)
        self.classes = (NONE, *(e.corruption for e in self.entries))
        if isinstance(detector, Detector):
            if detector.classes != self.classes:
                raise UsageError(f"the detector's classes {list(detector.classes)} are not the "
                                 f"library's {list(self.classes)}")  # fmt: skip
            self.detector = detector
        else:
            specs = [(None, 0), *((c, i) for i, c in enumerate(self.classes) if i)]
            specs += [(c, 0) for c in negatives]
            batches = training_batches(split.x, specs, n_batches=fit_batches,  # type: ignore[union-attr]
                                       batch_size=fit_batch_size, severity=severity, seed=seed)  # fmt: skip
            deltas = [{n: e.patch.delta(n) for n in e.patch.tensors} for e in self.entries]
            self.detector = fit_detector(detector, self._net(), batches, self.classes,
                                         deltas=deltas, depth=depth, head=head, reject=reject,
                                         seed=seed)  # fmt: skip
        self.settings: dict[str, Any] = {"negatives": list(negatives), "fit_batches": fit_batches,
            "fit_batch_size": fit_batch_size, "severity": list(severity), "seed": seed,
            "reject": reject}  # fmt: skip
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
        self.last: Route | None = None

    # --- construction -------------------------------------------------------------------------

    def _net(self) -> nn.Module:
        return unwrap_module(self.model)[0]

    def _scaled(
        self, entries: list[Entry], scales: str | Mapping[str, float], split: Any,
        search: Mapping[str, Any],
    ) -> list[Entry]:  # fmt: skip
        if isinstance(scales, Mapping):
            unknown = set(scales) - {e.corruption for e in entries}
            if unknown:
                raise UsageError(f"scales for corruptions not in the library: {sorted(unknown)}")
            return [Entry(e.patch.replace(scale=float(scales.get(e.corruption, e.patch.scale))),
                          e.corruption, e.reference) for e in entries]  # fmt: skip
        if scales == "patch":
            return entries
        if scales != "auto":
            raise UsageError(f"scales must be 'patch', 'auto' or a mapping, got {scales!r}")
        if split is None:
            raise UsageError("scales='auto' searches each α on validation data: give data=…")
        out = []
        for e in entries:
            p = e.patch.replace(scale=1.0) if e.patch.provenance.get("alpha_default") else e.patch
            s = search_settings(p, corruptions=[e.corruption], **search)
            op = search_operating_point(self.model, p, split, s)
            logger.info("%s: routing operating point α = %g", e.corruption, op.alpha)
            out.append(Entry(p.replace(scale=op.alpha * p.scale), e.corruption, e.reference))
        return out

    def _check_bases(self) -> None:
        """Every signature applies to this model: names, shapes, base fingerprints."""
        net = self._net()
        state = net.state_dict()
        for e in self.entries:
            for n in e.patch.tensors:
                if n not in state:
                    hint = f"signature {e.patch.label} was made for another model"
                    raise MissingTensorError(n, f"the model ({type(net).__name__})", hint)
            trial = {n: state[n].detach().clone() for n in e.patch.tensors}
            try:
                apply(trial, e.patch, force=self.force, clamp_var=self.clamp_var)
            except BaseMismatchError as err:
                raise BaseMismatchError(f"signature {e.patch.label} ({e.corruption})", err.tensor,
                                        err.expected, err.found) from None  # fmt: skip

    # --- serving ------------------------------------------------------------------------------

    def check_batch(self, x: object) -> None:
        """Refuse a batch the router was not fitted for (one line).

        Raises:
            BatchMismatchError: not a float32 tensor of shape (N, C, H, W) with the fitted C, H, W.
        """
        want = f"float32 (N, {', '.join(map(str, self.input_shape))})"
        if not isinstance(x, torch.Tensor):
            raise BatchMismatchError(want, type(x).__name__)
        if x.dtype != torch.float32 or x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            found = f"{str(x.dtype).removeprefix('torch.')} {tuple(x.shape)}"
            raise BatchMismatchError(want, found)
        if x.shape[0] == 0:
            raise BatchMismatchError(want, "an empty batch")

    def route(self, x: torch.Tensor) -> Route:
        """The detector's decision for one batch (nothing is patched)."""
        probs, rejected = self.detector.predict(self._net(), x)
        names = self.classes
        prob = {c: float(p) for c, p in zip(names, probs, strict=True)}
        if self.mode == "soft":
            weights = {} if rejected else {c: prob[c] for c in names[1:] if prob[c] >= 0.01}
            k = int(np.argmax(probs))
            choice = NONE if rejected or not weights else names[k]
            return Route(choice, prob[choice], prob, weights, rejected)
        k = int(np.argmax(probs))
        choice = NONE if rejected or probs[k] < self.threshold else names[k]
        weights = {} if choice == NONE else {choice: 1.0}
        return Route(choice, prob[choice], prob, weights, rejected)

    def _values(self, net: nn.Module, weights: Mapping[str, float]) -> dict[str, torch.Tensor]:
        """The patched values of the touched tensors (tensor name → value)."""
        if not weights:
            return {}
        items = [(e.patch, weights[e.corruption]) for e in self.entries if e.corruption in weights]
        state = net.state_dict()
        key = (",".join(f"{c}={w!r}" for c, w in weights.items()), str(state[next(iter(
            items[0][0].tensors))].device))  # fmt: skip
        if key in self._cache:
            return self._cache[key]
        vals = {n: state[n].detach().clone() for p, _ in items for n in p.tensors}
        apply(vals, *items, force=True, clamp_var=self.clamp_var)  # checked at construction
        if self.mode == "hard":
            self._cache[key] = vals
        return vals

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of ``model`` on ``x`` with the routed signature applied for this batch."""
        self.check_batch(x)
        with self._lock, eval_mode(self.model):
            t0 = time.perf_counter()
            net = self._net()
            r = self.route(x)
            t1 = time.perf_counter()
            values = self._values(net, r.weights)
            if not values:
                t2 = time.perf_counter()
                out = self.model(x)
                t3 = t4 = time.perf_counter()
            elif torch.is_grad_enabled():
                t2 = time.perf_counter()
                out = torch.func.functional_call(net, values, (x,))
                t3 = t4 = time.perf_counter()
            else:
                state = net.state_dict()
                saved = {n: state[n].detach().clone() for n in values}
                _write(state, values)
                t2 = time.perf_counter()
                try:
                    out = self.model(x)
                    t3 = time.perf_counter()
                finally:
                    _write(state, saved)
                t4 = time.perf_counter()
            self.last = Route(r.choice, r.confidence, r.probabilities, r.weights, r.rejected,
                              t1 - t0, (t2 - t1) + (t4 - t3), t3 - t2)  # fmt: skip
        return out

    # --- files --------------------------------------------------------------------------------

    def save(self, path: str) -> None:
        """Write the router (detector arrays + library references) to one safetensors file whose
        header holds the settings as JSON (:mod:`rws.routing.store`); no pickle."""
        from rws.routing.store import save_router

        save_router(self, path)

    @classmethod
    def load(cls, path: str, model: nn.Module, *, force: bool = False) -> Router:
        """A saved router on ``model``: its signatures are read from their references and must
        have the recorded content; fingerprints are checked against ``model`` again."""
        from rws.routing.store import load_parts

        parts = load_parts(path)
        router = cls(model, parts["library"], detector=parts["detector"], mode=parts["mode"],
                     threshold=parts["threshold"], scales=parts["scales"],
                     input_shape=parts["input_shape"], force=force)  # fmt: skip
        router.settings = parts["fit"]
        return router

    def describe(self) -> dict[str, Any]:
        """The router's settings, JSON-able (what ``rws route`` prints and a saved router keeps)."""
        return {"mode": self.mode, "threshold": self.threshold, "classes": list(self.classes),
                "input_shape": list(self.input_shape), "detector": self.detector.settings(),
                "library": [{"corruption": e.corruption, "reference": e.reference,
                             "label": e.patch.label, "scale": e.patch.scale,
                             "fingerprint": e.patch.fingerprint()} for e in self.entries],
                "fit": self.settings}  # fmt: skip


def _write(state: Mapping[str, torch.Tensor], values: Mapping[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for n, v in values.items():
            state[n].copy_(v)
