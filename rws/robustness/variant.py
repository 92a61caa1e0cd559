"""One evaluated model's results (:class:`Variant`): the unit of a :class:`~rws.robustness.report.Report`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Variant:
    """One evaluated model: the unpatched one or a patched variant.

    Attributes:
        name: ``"base"`` for the unpatched model, else the patch label (with ``@α`` when scaled).
        patches: ``[{"name", "alpha", "scale", "fingerprint", "source"}]`` of the applied patches.
        clean: clean accuracy.
        corruptions: corruption → severity → accuracy.
        mean_corruption: mean of ``corruptions`` over every cell (None without corruptions).
        mce: mean corruption error relative to the baseline (None without a baseline).
        robust: attack → robust accuracy (an example counts when clean and attacked both right).
        vs_base: changes against the unpatched model (None for the unpatched model itself):
            ``clean``, each ``robust[attack]`` and each ``corruptions[name]["severities"][s]`` a
            single cell (``{"test": "mcnemar", "delta", "p_value", "p_holm", "ci95", "gained",
            "lost", "n"}``); ``corruptions[name]`` (over severities) and ``mean_corruption``
            pooled rows tested over images (``"test": "wilcoxon"``, plus ``"images_up"``,
            ``"images_down"``); ``mce`` a plain difference (:mod:`rws.robustness.stats`).
        per_example: metric key (``"clean"``, ``"fog/3"``, ``"robust/pgd"``) → bool correctness
            per example; kept in memory only (not in JSON).
    """

    name: str
    patches: list[dict[str, Any]]
    clean: float
    corruptions: dict[str, dict[int, float]]
    mean_corruption: float | None
    mce: float | None
    robust: dict[str, float]
    vs_base: dict[str, Any] | None = None
    per_example: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    def severity_mean(self, corruption: str) -> float:
        """Accuracy on ``corruption``, mean over its severities (NaN when it has none)."""
        accs = list(self.corruptions[corruption].values())
        return sum(accs) / len(accs) if accs else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (severity keys become strings)."""
        return {
            "name": self.name,
            "patches": [dict(p) for p in self.patches],
            "clean": self.clean,
            "corruptions": {
                c: {str(s): a for s, a in sev.items()} for c, sev in self.corruptions.items()
            },
            "mean_corruption": self.mean_corruption,
            "mce": self.mce,
            "robust": dict(self.robust),
            "vs_base": str_keys(self.vs_base),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Variant:
        """Inverse of :meth:`to_dict`."""
        vs = d.get("vs_base")
        if vs is not None:
            vs = json.loads(json.dumps(vs))
            for c in vs.get("corruptions", {}).values():
                c["severities"] = {int(s): v for s, v in c.get("severities", {}).items()}
        return cls(
            name=d["name"],
            patches=[dict(p) for p in d.get("patches", [])],
            clean=d["clean"],
            corruptions={
                c: {int(s): a for s, a in sev.items()} for c, sev in d["corruptions"].items()
            },
            mean_corruption=d.get("mean_corruption"),
            mce=d.get("mce"),
            robust=dict(d.get("robust", {})),
            vs_base=vs,
        )


def str_keys(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): str_keys(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [str_keys(v) for v in obj]
    return obj
