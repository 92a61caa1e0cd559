"""Mean corruption error (mCE): baseline errors (a report, a model's run or AlexNet's) and the ratio."""

from __future__ import annotations

import logging
import os
from typing import Any

from torch import nn

from rws.errors import InputFileError, MalformedInputError, UsageError
from rws.robustness.report import Report, Variant

logger = logging.getLogger(__name__)

# AlexNet's ImageNet-C errors, mean over severities (Hendrycks & Dietterich 2019): the mCE reference.
ALEXNET_ERRORS: dict[str, float] = {
    "gaussian_noise": 0.886428, "shot_noise": 0.894468, "impulse_noise": 0.922640,
    "defocus_blur": 0.819880, "glass_blur": 0.826268, "motion_blur": 0.785948,
    "zoom_blur": 0.798360, "snow": 0.866816, "frost": 0.826572, "fog": 0.819324,
    "brightness": 0.564592, "contrast": 0.853204, "elastic_transform": 0.646056,
    "pixelate": 0.717840, "jpeg_compression": 0.606500,
}  # fmt: skip


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
        except (ValueError, KeyError, TypeError, RecursionError) as exc:  # crafted JSON too
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
