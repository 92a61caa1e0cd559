"""A detector: a feature kind (:mod:`rws.routing.features`) and a fitted head
(:mod:`rws.routing.heads`), plus the training batches it is fitted on.

Training batches are drawn from the validation images: for each class (``none``: clean, plus
each signature's corruption, plus any ``negatives`` corruptions labelled ``none``) ``n_batches``
random sub-batches of ``batch_size`` images, each corrupted at a severity drawn uniformly from
``severity``; everything comes from one seeded generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from rws.errors import UsageError
from rws.robustness.corruptions import corrupt
from rws.routing import features as feat
from rws.routing.heads import HEADS, Head, fit_head
from rws.runtime.seed import generator

__all__ = ["DETECTORS", "Detector", "fit_detector", "training_batches"]

DETECTORS = {"input": "logistic", "activation": "centroid", "prototype": "centroid"}
NONE = "none"


@dataclass(frozen=True)
class Detector:
    """A fitted detector over ``classes`` (``"none"`` first).

    Attributes:
        kind: ``input``, ``activation`` or ``prototype``.
        head: the fitted classifier.
        classes: the class names, ``"none"`` first.
        depth: (activation) BatchNorm layers probed.
        conv: (prototype) the module name of the convolution probed.
        protos: (prototype) (K, C·kh·kw) prototypes, one per signature in class order.
    """

    kind: str
    head: Head
    classes: tuple[str, ...]
    depth: int = 2
    conv: str = ""
    protos: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.float64))

    def features(self, model: nn.Module, x: torch.Tensor) -> np.ndarray:
        """The batch's feature vector (float64)."""
        if self.kind == "input":
            out = feat.input_features(x)
        elif self.kind == "activation":
            out = feat.activation_features(model, x, self.depth)
        else:
            out = feat.prototype_features(model, x, dict(model.named_modules())[self.conv],
                                          self.protos)  # fmt: skip
        return out.numpy()

    def predict(self, model: nn.Module, x: torch.Tensor) -> tuple[np.ndarray, bool]:
        """Class probabilities of one batch and whether it was rejected (an unknown shift)."""
        probs, rejected = self.head.predict(self.features(model, x))
        return probs[0], bool(rejected[0])

    def settings(self) -> dict[str, Any]:
        """JSON-able settings (the arrays go to :meth:`arrays`)."""
        return {"kind": self.kind, "head": self.head.kind, "classes": list(self.classes),
                "depth": self.depth, "conv": self.conv}  # fmt: skip

    def arrays(self) -> dict[str, np.ndarray]:
        """Every array of the detector, float64."""
        out = {f"head.{k}": v for k, v in self.head.arrays().items()}
        out["protos"] = self.protos.double().numpy()
        return out

    @classmethod
    def from_parts(cls, settings: dict[str, Any], arrays: dict[str, np.ndarray]) -> Detector:
        """The detector :meth:`settings` and :meth:`arrays` describe."""
        head = Head.from_arrays(str(settings["head"]), {k.removeprefix("head."): v
                                for k, v in arrays.items() if k.startswith("head.")})  # fmt: skip
        return cls(str(settings["kind"]), head, tuple(settings["classes"]), int(settings["depth"]),
                   str(settings["conv"]), torch.from_numpy(np.array(arrays["protos"])))  # fmt: skip


def training_batches(
    x: torch.Tensor, corruptions: Sequence[tuple[str | None, int]], *, n_batches: int,
    batch_size: int, severity: tuple[int, int], seed: int,
) -> list[tuple[torch.Tensor, int]]:  # fmt: skip
    """``n_batches`` sub-batches of ``x`` per ``(corruption, label)`` (corruption None: clean),
    each labelled with its label."""
    g = generator(seed)
    out = []
    size = min(batch_size, len(x))
    for name, label in corruptions:
        for _ in range(n_batches):
            idx = torch.randperm(len(x), generator=g)[:size]
            xb = x[idx]
            if name is not None:
                sev = int(torch.randint(severity[0], severity[1] + 1, (1,), generator=g))
                xb = corrupt(xb, name, sev, generator=g)
            out.append((xb, label))
    return out


def fit_detector(
    kind: str, model: nn.Module, batches: Sequence[tuple[torch.Tensor, int]],
    classes: Sequence[str], *, deltas: Sequence[dict[str, torch.Tensor]] = (), depth: int = 2,
    head: str | None = None, reject: float | None = 0.99, seed: int = 0,
) -> Detector:  # fmt: skip
    """Fit a detector of ``kind`` on labelled batches (labels index ``classes``).

    Args:
        deltas: (prototype) each signature's decoded deltas by tensor name, in class order
            (after ``"none"``).

    Raises:
        UsageError: an unknown kind or head.
    """
    if kind not in DETECTORS:
        raise UsageError(f"unknown detector {kind!r}; choose one of: {', '.join(DETECTORS)}")
    head = head or DETECTORS[kind]
    if head not in HEADS:
        raise UsageError(f"unknown detector head {head!r}; choose one of: {', '.join(HEADS)}")
    conv, protos = "", torch.zeros(0, 0, dtype=torch.float64)
    if kind == "prototype":
        conv, _ = feat.first_conv(model, [n for d in deltas for n in d])
        protos = feat.prototypes([d[f"{conv}.weight"] for d in deltas])
    probe = Detector(kind, Head.from_arrays(head, _empty()), tuple(classes), depth, conv, protos)
    rows = np.stack([probe.features(model, xb) for xb, _ in batches])
    labels = np.array([lab for _, lab in batches])
    fitted = fit_head(head, rows, labels, len(classes), reject=reject, seed=seed)
    return Detector(kind, fitted, tuple(classes), depth, conv, protos)


def _empty() -> dict[str, np.ndarray]:
    z = np.zeros(0)
    return {"mean": z, "spread": z, "centroids": z, "within": z, "coef": z, "intercept": z,
            "scalars": np.array([1.0, np.inf])}  # fmt: skip
