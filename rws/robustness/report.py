"""The result of :func:`rws.robustness.evaluate.evaluate`: JSON, CSV, a figure and a rich table.

JSON shape (accuracies and errors are fractions in [0, 1]; severities are string keys)::

    {"variants": [{"name", "patches", "clean", "corruptions": {name: {severity: acc}},
                   "mean_corruption", "mce", "robust": {attack: acc},
                   "vs_base": {"clean": TEST, "corruptions": {name: {**TEST,
                                                                     "severities": {s: TEST}}},
                               "mean_corruption": TEST, "mce": Δ, "robust": {attack: TEST}}
                              | null}, …],
     "settings": {…}}

    TEST = {"test", "delta", "p_value", "p_holm", "ci95": [lo, hi], "gained", "lost", "n"}
           (+ "images_up", "images_down" when "test" is "wilcoxon")

The unpatched model comes first. ``vs_base`` compares a patched variant with it on the same inputs;
``delta`` is the accuracy change. A single cell (clean, one corruption × severity, one attack) is
tested by the exact McNemar test on the examples where the two disagree (``test: "mcnemar"``;
``gained``: only the variant is right, ``lost``: only the base), with Newcombe's paired interval
as ``ci95``. A pooled row (a corruption's mean over severities, the mean corruption) is tested at
the image level (``test: "wilcoxon"``): the Wilcoxon signed-rank test on each image's mean
correctness, variant minus base, and a seeded paired bootstrap over images for ``ci95``. ``p_holm``
is Holm-adjusted over every tested row of the variant; the table shows it. Reports written before
these keys existed still load (the missing keys read as absent).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rws.io.atomic import write_atomic
from rws.robustness.attacks.checks import check_cells
from rws.robustness.config import EvalConfig
from rws.robustness.variant import Variant

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

COLUMNS = ["variant", "metric", "value", "delta", "test", "p_value", "p_holm", "ci95_lo", "ci95_hi",
           "kernel", "table"]  # fmt: skip


@dataclass
class Report:
    """Before/after robustness results of one evaluation run.

    Attributes:
        variants: the unpatched model first, then one entry per patch variant.
        settings: how the run was made: the :class:`EvalConfig` asked for (``config``, see
            :attr:`config`) and what it resolved to: data, corruptions, severities, attack, ε,
            steps, seed, device, the severity table that ran (``table``, e.g.
            ``"imagenet (make_imagenet_c.py)"``; None for corruptions read from files and older
            reports), the sha256 of the cached inputs (``inputs_sha256``) and of the inputs each
            variant was fed (``inputs_seen_sha256``), how the forwards ran (``runtime``:
            precision, generator device, forward batch …, docs/gpu.md), warnings, versions; with
            ``EvalConfig.checks`` (``rws eval --checks``) ``checks``: variant name → the measured
            convergence checks (:func:`rws.robustness.attacks.checks.convergence_checks`; absent
            in other reports).
    """

    variants: list[Variant]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> EvalConfig:
        """The evaluation's settings (:meth:`EvalConfig.from_settings`: older reports too)."""
        return EvalConfig.from_settings(self.settings)

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
        """One row per variant × metric: ``variant, metric, value`` and the test (:data:`COLUMNS`).

        Metrics: ``clean``, ``corruption/<name>/<severity>``, ``corruption/<name>`` (mean over
        severities), ``mean_corruption``, ``mce``, ``robust/<attack>``. ``test``, ``p_value``,
        ``p_holm`` and ``ci95_lo/hi`` are None where the report has none (the base, mCE, older
        reports). ``kernel`` (corruption rows): ``reference`` or ``approximate``
        (:func:`rws.robustness.corruptions.kernel_fidelity`), None for other rows, for corruptions
        read from files and for older reports; ``table`` (corruption rows): the severity table that
        ran (``settings["table"]``), None likewise.
        """
        kernels = self.settings.get("kernels") or {}
        ran = self.settings.get("table")
        out: list[dict[str, Any]] = []
        for v in self.variants:
            vs = v.vs_base or {}

            def row(
                metric: str, value: float | None, cmp: dict[str, Any] | None, name: str = v.name
            ) -> None:
                cmp = cmp or {}
                ci = cmp.get("ci95") or [None, None]
                parts = metric.split("/")
                corr = parts[0] == "corruption"
                kernel = kernels.get(parts[1]) if corr else None
                out.append(
                    {"variant": name, "metric": metric, "value": value,
                     "delta": cmp.get("delta"), "test": cmp.get("test"),
                     "p_value": cmp.get("p_value"), "p_holm": cmp.get("p_holm"),
                     "ci95_lo": ci[0], "ci95_hi": ci[1], "kernel": kernel,
                     "table": ran if corr else None}
                )  # fmt: skip

            row("clean", v.clean, vs.get("clean"))
            for c, sev in v.corruptions.items():
                vc = vs.get("corruptions", {}).get(c, {})
                for s, acc in sev.items():
                    row(f"corruption/{c}/{s}", acc, vc.get("severities", {}).get(s))
                row(f"corruption/{c}", v.severity_mean(c), vc)
            if v.mean_corruption is not None:
                row("mean_corruption", v.mean_corruption, vs.get("mean_corruption"))
            if v.mce is not None:
                mce_delta = vs.get("mce")
                row("mce", v.mce, None if mce_delta is None else {"delta": mce_delta})
            for a, acc in v.robust.items():
                row(f"robust/{a}", acc, vs.get("robust", {}).get(a))
        return out

    def save_csv(self, path: str | os.PathLike) -> None:
        """Write :meth:`rows` as CSV (columns :data:`COLUMNS`), atomically."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS)
        writer.writeheader()
        for r in self.rows():
            writer.writerow({k: "" if v is None else v for k, v in r.items()})
        write_atomic(path, buf.getvalue())

    def figure(self) -> Figure:
        """A corruption × severity accuracy heatmap per variant and before/after bars per
        corruption (plus clean, mean corruption and robust accuracy), as a detached ``Figure``
        (:func:`rws.robustness.plots.report_figure`; no backend is selected)."""
        from rws.robustness.plots import report_figure

        return report_figure(self.variants)

    def save_plots(self, path: str | os.PathLike) -> None:
        """Write :meth:`figure` atomically (PNG unless the extension says otherwise)."""
        from rws.io.figures import save_figure

        save_figure(self.figure(), path)

    def table(self) -> Any:
        """A ``rich.table.Table``: one row per metric, one column per variant, with Δ and the
        Holm-adjusted p (the raw p, marked, for reports that predate it)."""
        return _report_table(self)


# --- rendering ----------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _change(cmp: dict[str, Any] | None) -> str:
    """``+1.4 pt (p=0.012)`` with the Holm-adjusted p; an older report's raw p says so."""
    if not cmp or cmp.get("delta") is None:
        return ""
    text = f"{100 * cmp['delta']:+.1f} pt"
    if cmp.get("p_holm") is not None:
        return text + f" (p={cmp['p_holm']:.2g})"
    if cmp.get("p_value") is not None:
        return text + f" (raw p={cmp['p_value']:.2g})"
    return text


def _report_table(report: Report) -> Any:
    from rich.table import Table

    title = "robustness before / after patching (accuracy; Δ vs base; p: Holm-adjusted McNemar per"
    title += " cell, Wilcoxon over images for pooled rows)"
    if report.settings.get("table"):
        title += f"; corruption table {report.settings['table']}"
    table = Table(title=title)
    table.add_column("metric", overflow="fold")  # folded, never cut with "…"
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
    for c, by_severity in report.base.corruptions.items():
        sevs = list(by_severity)
        add(
            f"{c} (severity {sevs[0]})" if len(sevs) == 1 else f"{c} (mean sev.)",
            [_pct(v.severity_mean(c)) for v in report.variants],
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
    checks = report.settings.get("checks") or {}  # rws eval --checks
    cells = [check_cells(checks.get(v.name, {})) for v in report.variants]
    for label in dict.fromkeys(k for c in cells for k in c):
        add(label, [c.get(label, "") for c in cells], [""] * len(cells))
    return table
