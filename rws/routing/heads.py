"""The classifier on top of a detector's batch features, stored as plain arrays.

Features are standardised (training mean and spread), then either

- ``logistic``: scikit-learn's multinomial ``LogisticRegression``; only its coefficients and
  intercepts are kept, and prediction is ``softmax(z·Wᵀ + b)`` computed here in float64, so a
  saved and re-loaded head gives bit-identical probabilities without scikit-learn's pickles;
- ``centroid``: nearest class centroid under the pooled within-class spread (a diagonal LDA):
  ``softmax(−d²/T)`` with the temperature ``T`` fitted by likelihood on the training batches.

Both also keep the class centroids and a rejection radius: a batch farther from every centroid
than ``reject`` (a quantile of the training batches' distances to their own class centroid) is
reported as rejected, which the router takes as "none" (an unknown shift).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rws.errors import UsageError

__all__ = ["HEADS", "Head", "fit_head"]

HEADS = ("logistic", "centroid")
_TEMPERATURES = np.logspace(-3, 3, 61)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = _EXP(z).astype(np.float64)  # math.exp per element: no SIMD path that depends on layout
    total = np.zeros((e.shape[0], 1))
    for k in range(e.shape[1]):  # a fixed summation order
        total = total + e[:, k : k + 1]
    return e / total


_EXP = np.frompyfunc(math.exp, 1, 1)


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(M, D) · (K, D)ᵀ summed over D in a fixed order: elementwise IEEE operations only, so the
    result does not depend on memory layout or BLAS kernels (a loaded head predicts bit for bit
    what the fitted one did)."""
    out = np.zeros((a.shape[0], b.shape[0]))
    for d in range(a.shape[1]):
        out = out + a[:, d : d + 1] * b[None, :, d]
    return out


@dataclass(frozen=True)
class Head:
    """A fitted head: its kind and float64 arrays (see the module doc)."""

    kind: str
    mean: np.ndarray  # (D,) feature standardisation
    spread: np.ndarray  # (D,)
    centroids: np.ndarray  # (K, D) standardised class means
    within: np.ndarray  # (D,) pooled within-class standard deviation
    coef: np.ndarray  # (K, D) logistic weights (zeros for centroid)
    intercept: np.ndarray  # (K,)
    temperature: float
    radius: float  # rejection radius (inf: never reject)

    def distances(self, feats: np.ndarray) -> np.ndarray:
        """(M, K) mean squared standardised distance of each feature row to each centroid."""
        z = (np.atleast_2d(feats) - self.mean) / self.spread
        diff = (z[:, None, :] - self.centroids[None]) / self.within
        sq = diff * diff
        out = np.zeros(sq.shape[:2])
        for d in range(sq.shape[2]):  # a fixed summation order (see _dot)
            out = out + sq[:, :, d]
        return out / max(sq.shape[2], 1)

    def predict(self, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities (M, K) and a rejected flag (M,) per feature row."""
        feats = np.atleast_2d(np.asarray(feats, dtype=np.float64))
        d2 = self.distances(feats)
        if self.kind == "logistic":
            z = (feats - self.mean) / self.spread
            probs = _softmax(_dot(z, self.coef) + self.intercept)
        else:
            probs = _softmax(-d2 / self.temperature)
        return probs, d2.min(axis=1) > self.radius

    def arrays(self) -> dict[str, np.ndarray]:
        """Every parameter as a float64 array (what a saved router stores)."""
        scalars = np.array([self.temperature, self.radius], dtype=np.float64)
        return {"mean": self.mean, "spread": self.spread, "centroids": self.centroids,
                "within": self.within, "coef": self.coef, "intercept": self.intercept,
                "scalars": scalars}  # fmt: skip

    @classmethod
    def from_arrays(cls, kind: str, arrays: dict[str, np.ndarray]) -> Head:
        """The head :meth:`arrays` describes (bit-identical predictions)."""
        if kind not in HEADS:
            raise UsageError(f"unknown detector head {kind!r}; choose one of: {', '.join(HEADS)}")
        a = {k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()}
        return cls(kind, a["mean"], a["spread"], a["centroids"], a["within"], a["coef"],
                   a["intercept"], float(a["scalars"][0]), float(a["scalars"][1]))  # fmt: skip


def fit_head(
    kind: str, feats: np.ndarray, labels: np.ndarray, n_classes: int, *, reject: float | None,
    seed: int = 0,
) -> Head:  # fmt: skip
    """Fit a head on (M, D) batch features with labels in ``range(n_classes)``.

    Raises:
        UsageError: an unknown kind, a class without examples, or a bad ``reject`` quantile.
    """
    if kind not in HEADS:
        raise UsageError(f"unknown detector head {kind!r}; choose one of: {', '.join(HEADS)}")
    if reject is not None and not 0 < reject <= 1:
        raise UsageError(f"reject must be a quantile in (0, 1] or None, got {reject!r}")
    feats, labels = np.asarray(feats, dtype=np.float64), np.asarray(labels)
    if sorted(set(labels.tolist())) != list(range(n_classes)):
        raise UsageError("every class needs training batches")
    mean, spread = feats.mean(0), feats.std(0) + 1e-8
    z = (feats - mean) / spread
    centroids = np.stack([z[labels == k].mean(0) for k in range(n_classes)])
    within = (z - centroids[labels]).std(0) + 1e-3
    coef, intercept = np.zeros_like(centroids), np.zeros(n_classes)
    own = np.square((z - centroids[labels]) / within).mean(1)
    temperature = 1.0
    if kind == "logistic":
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=1.0, max_iter=5000, random_state=seed).fit(z, labels)
        if n_classes == 2:  # sklearn keeps one row: softmax([0, w·z + b]) is the same model
            coef[1], intercept[1] = clf.coef_[0], clf.intercept_[0]
        else:
            coef, intercept = clf.coef_.astype(np.float64), clf.intercept_.astype(np.float64)
    else:
        d2 = np.square((z[:, None, :] - centroids[None]) / within).mean(2)
        nll = [-np.log(_softmax(-d2 / t)[np.arange(len(labels)), labels] + 1e-12).mean()
               for t in _TEMPERATURES]  # fmt: skip
        temperature = float(_TEMPERATURES[int(np.argmin(nll))])
    radius = float(np.quantile(own, reject)) if reject is not None else float("inf")
    return Head(kind, mean, spread, centroids, within, coef, intercept, temperature, radius)
