"""The result of :func:`rws.robustness.evaluate.evaluate`: JSON, CSV, plots and a rich table.

JSON shape (accuracies and errors are fractions in [0, 1]; severities are string keys)::

    {"variants": [{"name", "patches", "clean", "corruptions": {name: {severity: acc}},
                   "mean_corruption", "mce", "robust": {attack: acc},
                   "vs_base": {metric: {"delta", "p_value", "gained", "lost"}, …} | null}, …],
     "settings": {…}}

The unpatched model comes first. ``vs_base`` compares a patched variant with it on the same inputs:
``delta`` is the accuracy change, ``p_value`` the exact McNemar test on the examples where the two
disagree (``gained``: only the variant is right; ``lost``: only the base is right).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from rws.errors import InputFileError, MalformedInputError, UsageError
from rws.io.atomic import write_atomic

logger = logging.getLogger(__name__)

# --- statistics ---------------------------------------------------------------------------------


def mcnemar_p(gained: int, lost: int) -> float:
    """Exact two-sided McNemar p-value: a binomial test of ``gained`` vs ``lost`` discordant pairs.

    Example:
        >>> round(mcnemar_p(8, 2), 6)  # 2·P(X ≤ 2), X ~ Bin(10, 1/2) = 112/1024
        0.109375
    """
    n = gained + lost
    if n == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(min(gained, lost), n, 0.5).pvalue)


def accuracy(correct: torch.Tensor) -> float:
    """Share of ``True`` in a bool tensor, computed exactly from counts (NaN when empty)."""
    return int(correct.sum()) / correct.numel() if correct.numel() else float("nan")


def compare(base: torch.Tensor, other: torch.Tensor) -> dict[str, Any]:
    """``{"delta", "p_value", "gained", "lost"}`` of paired per-example correctness."""
    gained, lost = int((~base & other).sum()), int((base & ~other).sum())
    return {"delta": (gained - lost) / max(1, base.numel()), "p_value": mcnemar_p(gained, lost),
            "gained": gained, "lost": lost}  # fmt: skip


# AlexNet's ImageNet-C errors, mean over severities (Hendrycks & Dietterich 2019): the mCE reference.
ALEXNET_ERRORS: dict[str, float] = {
    "gaussian_noise": 0.886428, "shot_noise": 0.894468, "impulse_noise": 0.922640,
    "defocus_blur": 0.819880, "glass_blur": 0.826268, "motion_blur": 0.785948,
    "zoom_blur": 0.798360, "snow": 0.866816, "frost": 0.826572, "fog": 0.819324,
    "brightness": 0.564592, "contrast": 0.853204, "elastic_transform": 0.646056,
    "pixelate": 0.717840, "jpeg_compression": 0.606500,
}  # fmt: skip


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
            ``clean``, ``mean_corruption`` and each ``robust[attack]`` as
            ``{"delta", "p_value", "gained", "lost"}``; ``corruptions[name]`` the same pooled over
            severities plus ``"severities": {severity: {…}}``; ``mce`` a plain difference.
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
            "vs_base": _str_keys(self.vs_base),
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


def _str_keys(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _str_keys(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_str_keys(v) for v in obj]
    return obj


@dataclass
class Report:
    """Before/after robustness results of one evaluation run.

    Attributes:
        variants: the unpatched model first, then one entry per patch variant.
        settings: how the run was made: data, corruptions, severities, attack, ε, steps, seed,
            device, the sha256 of the cached inputs (``inputs_sha256``) and of the inputs each
            variant was fed (``inputs_seen_sha256``), warnings, versions.
    """

    variants: list[Variant]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def base(self) -> Variant:
        """The unpatched model's results."""
        return self.variants[0]

    def variant(self, name: str) -> Variant:
        """The variant called ``name``; raises ``KeyError`` listing the names."""
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(f"no variant {name!r}; have {[v.name for v in self.variants]}")

    # --- serialisation --------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """``{"variants": […], "settings": {…}}``, JSON-ready."""
        return {
            "variants": [v.to_dict() for v in self.variants],
            "settings": json.loads(json.dumps(self.settings)),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Report:
        """Inverse of :meth:`to_dict` (per-example results are not stored, so they come back empty)."""
        return cls([Variant.from_dict(v) for v in d["variants"]], dict(d.get("settings", {})))

    @classmethod
    def load_json(cls, path: str | os.PathLike) -> Report:
        """Read a report written by :meth:`save_json`."""
        with open(path, encoding="utf-8") as fh:
            return cls.from_dict(json.load(fh))

    def save_json(self, path: str | os.PathLike) -> None:
        """Write the JSON report atomically (temp file in the same folder, fsync, rename)."""
        write_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")

    def rows(self) -> list[dict[str, Any]]:
        """One row per variant × metric: ``variant, metric, value, delta, p_value``.

        Metrics: ``clean``, ``corruption/<name>/<severity>``, ``corruption/<name>`` (mean over
        severities), ``mean_corruption``, ``mce``, ``robust/<attack>``.
        """
        out: list[dict[str, Any]] = []
        for v in self.variants:
            vs = v.vs_base or {}

            def row(
                metric: str, value: float | None, cmp: dict[str, Any] | None, name: str = v.name
            ) -> None:
                cmp = cmp or {}
                out.append(
                    {"variant": name, "metric": metric, "value": value,
                     "delta": cmp.get("delta"), "p_value": cmp.get("p_value")}
                )  # fmt: skip

            row("clean", v.clean, vs.get("clean"))
            for c, sev in v.corruptions.items():
                vc = vs.get("corruptions", {}).get(c, {})
                for s, acc in sev.items():
                    row(f"corruption/{c}/{s}", acc, vc.get("severities", {}).get(s))
                row(f"corruption/{c}", _mean(sev.values()), vc)
            if v.mean_corruption is not None:
                row("mean_corruption", v.mean_corruption, vs.get("mean_corruption"))
            if v.mce is not None:
                mce_delta = vs.get("mce")
                row("mce", v.mce, None if mce_delta is None else {"delta": mce_delta})
            for a, acc in v.robust.items():
                row(f"robust/{a}", acc, vs.get("robust", {}).get(a))
        return out

    def save_csv(self, path: str | os.PathLike) -> None:
        """Write :meth:`rows` as CSV, atomically."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["variant", "metric", "value", "delta", "p_value"])
        writer.writeheader()
        for r in self.rows():
            writer.writerow({k: "" if v is None else v for k, v in r.items()})
        write_atomic(path, buf.getvalue())

    def save_plots(self, path: str | os.PathLike) -> None:
        """Write a PNG: a corruption × severity accuracy heatmap per variant, and before/after bars
        per corruption (plus clean, mean corruption and robust accuracy). Atomic (Agg backend)."""
        _plot_report(self, path)

    def table(self) -> Any:
        """A ``rich.table.Table``: one row per metric, one column per variant, with Δ and p."""
        return _report_table(self)


def _mean(values: Any) -> float:
    vals = list(values)
    return sum(vals) / len(vals) if vals else float("nan")


def baseline_errors(
    baseline: Report | str | os.PathLike | nn.Module | None, cells: list[tuple[str, int]]
) -> tuple[dict[str, dict[int, float]] | None, dict[str, Any] | None]:
    """Baseline errors per corruption and severity for mCE, and a description of the baseline.

    ``baseline`` is a :class:`Report` or its JSON path (its unpatched model's errors), ``"alexnet"``
    (AlexNet's ImageNet-C mean error for every severity) or None; models are evaluated by the caller.

    Raises:
        UsageError: a corruption or severity the baseline lacks. InputFileError,
        MalformedInputError: an unreadable baseline report.
    """
    if baseline is None or isinstance(baseline, nn.Module):
        return None, None
    if isinstance(baseline, str) and baseline == "alexnet":
        missing = sorted({c for c, _ in cells} - set(ALEXNET_ERRORS))
        if missing:
            raise UsageError(f"no AlexNet ImageNet-C error for {', '.join(missing)}")
        errs = {c: {s: ALEXNET_ERRORS[c] for cc, s in cells if cc == c} for c, _ in cells}
        return errs, {"kind": "alexnet", "source": "AlexNet ImageNet-C errors"}
    source = "<Report>"
    if not isinstance(baseline, Report):
        source = os.fspath(baseline)
        if not os.path.isfile(source):
            raise InputFileError(source, "no such baseline report")
        try:
            baseline = Report.load_json(source)
        except (ValueError, KeyError, TypeError) as exc:
            raise MalformedInputError(source, f"not an rws evaluation report ({exc})") from None
    acc = baseline.base.corruptions
    missing = [f"{c}/{s}" for c, s in cells if s not in acc.get(c, {})]
    if missing:
        raise UsageError(f"baseline report {source} lacks {', '.join(missing[:5])}; rerun it")
    errs = {c: {s: 1.0 - acc[c][s] for cc, s in cells if cc == c} for c, _ in cells}
    return errs, {"kind": "report", "source": source,
                  "inputs_sha256": baseline.settings.get("inputs_sha256")}  # fmt: skip


def mean_corruption_error(v: Variant, errs: dict[str, dict[int, float]] | None) -> float | None:
    """mCE: mean over corruptions of ``Σ_s err(c, s) / Σ_s err_baseline(c, s)`` (None without one)."""
    if not errs or not v.corruptions:
        return None
    ces = []
    for c, sev in v.corruptions.items():
        denom = sum(errs[c].values())
        if denom <= 0:
            logger.warning("baseline error of %s is 0: mCE undefined", c)
            return None
        ces.append(sum(1.0 - a for a in sev.values()) / denom)
    return sum(ces) / len(ces)


# --- rendering ----------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _change(cmp: dict[str, Any] | None) -> str:
    if not cmp or cmp.get("delta") is None:
        return ""
    text = f"{100 * cmp['delta']:+.1f} pt"
    return text + (f" (p={cmp['p_value']:.2g})" if cmp.get("p_value") is not None else "")


def _bar_metrics(v: Variant) -> dict[str, float]:
    """Label → accuracy for the before/after bars."""
    out = {"clean": v.clean}
    out.update({c: _mean(sev.values()) for c, sev in v.corruptions.items()})
    if v.mean_corruption is not None:
        out["mean corr."] = v.mean_corruption
    out.update({f"robust {a}": acc for a, acc in v.robust.items()})
    return out


def _report_table(report: Report) -> Any:
    from rich.table import Table

    table = Table(title="robustness before / after patching (accuracy; Δ vs base, McNemar p)")
    table.add_column("metric")
    for i, v in enumerate(report.variants):
        table.add_column(v.name, justify="right")
        if i:
            table.add_column("Δ", justify="right")

    def add(label: str, values: list[str], changes: list[str]) -> None:
        cells = [values[0]]
        for val, ch in zip(values[1:], changes[1:], strict=True):
            cells += [val, ch]
        table.add_row(label, *cells)

    vs = [v.vs_base or {} for v in report.variants]
    add("clean", [_pct(v.clean) for v in report.variants], [_change(d.get("clean")) for d in vs])
    for c in report.base.corruptions:
        add(
            c + " (mean sev.)",
            [_pct(_mean(v.corruptions[c].values())) for v in report.variants],
            [_change(d.get("corruptions", {}).get(c)) for d in vs],
        )
    if report.base.mean_corruption is not None:
        add(
            "mean corruption",
            [_pct(v.mean_corruption) for v in report.variants],
            [_change(d.get("mean_corruption")) for d in vs],
        )
    if report.base.mce is not None:
        add(
            "mCE",
            [_pct(v.mce) for v in report.variants],
            [_change({"delta": d.get("mce")}) for d in vs],
        )
    for a in report.base.robust:
        add(
            f"robust ({a})",
            [_pct(v.robust[a]) for v in report.variants],
            [_change(d.get("robust", {}).get(a)) for d in vs],
        )
    return table


def _plot_report(report: Report, path: str | os.PathLike) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import numpy as np

    variants = report.variants
    names = list(report.base.corruptions)
    severities = sorted({s for sev in report.base.corruptions.values() for s in sev})
    n = len(variants)
    has_heat = bool(names)
    fig = plt.figure(figsize=(max(8.0, 3.6 * n), 8.5 if has_heat else 4.2), layout="constrained")
    grid = fig.add_gridspec(2 if has_heat else 1, n)
    if has_heat:
        for i, v in enumerate(variants):
            ax = fig.add_subplot(grid[0, i])
            mat = np.array([[v.corruptions[c].get(s, np.nan) for s in severities] for c in names])
            im = ax.imshow(mat, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
            ax.set_xticks(range(len(severities)), [str(s) for s in severities])
            ax.set_yticks(range(len(names)), names if i == 0 else [""] * len(names), fontsize=8)
            ax.set_xlabel("severity")
            ax.set_title(v.name, fontsize=10)
            if mat.size <= 40:
                for (r, c), val in np.ndenumerate(mat):
                    color = "white" if val < 0.6 else "black"
                    ax.text(
                        c, r, f"{100 * val:.0f}", ha="center", va="center", fontsize=7, color=color
                    )
        fig.colorbar(im, ax=fig.axes, shrink=0.8, label="accuracy")
    ax = fig.add_subplot(grid[-1, :])
    labels = list(_bar_metrics(report.base))
    width = 0.8 / n
    for i, v in enumerate(variants):
        vals = _bar_metrics(v)
        xs = np.arange(len(labels)) + (i - (n - 1) / 2) * width
        ax.bar(xs, [100 * vals[k] for k in labels], width, label=v.name)
    ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title("before / after per corruption (mean over severities)", fontsize=10)
    if has_heat:
        fig.suptitle("accuracy (%) per corruption × severity", fontsize=11)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    write_atomic(path, buf.getvalue())
