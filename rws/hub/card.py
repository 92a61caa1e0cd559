"""Model cards for patch repos on the Hub: a pure function of the patches and an ``rws eval`` report.

The YAML front matter follows the Hub's conventions: ``library_name: rws``; ``tags`` (rws,
robustness, each patch's kind and method, the corruptions it targets); ``base_model`` (with
``base_model_relation: adapter``) when the base is known, from a ``base_model`` tag or an
``hf://`` base in the provenance; and the report's results for each patched variant in
``model-index`` form (clean, per-corruption, mean-corruption and robust accuracy of the patched
model). The body says how to apply the patches with the CLI and the Python API and shows the
before/after table.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rws.errors import HubReferenceError
from rws.io.hub_ref import is_hub_ref, repo_ref
from rws.robustness.corruptions.params import reference_data

if TYPE_CHECKING:
    from rws.patching.patch import Patch
    from rws.robustness.report import Report, Variant

TASK = {"type": "image-classification", "name": "Image Classification"}


def model_card(
    files: Sequence[tuple[str, Patch]], repo_id: str, *, report: Report | None = None
) -> str:
    """The ``README.md`` of a repo holding ``files`` (``(name in the repo, patch)`` pairs).

    Args:
        files: the patches and the file names they are stored under.
        repo_id: ``ORG/NAME`` of the repo.
        report: an ``rws eval`` report; its variants that apply exactly one of the patches (matched
            by fingerprint) give the card's results and before/after tables.

    Example:
        >>> patch = rws.load("fog.rws.safetensors")  # doctest: +SKIP
        >>> card = model_card([("fog.rws.safetensors", patch)], "org/fog")  # doctest: +SKIP
    """
    import yaml

    meta = card_metadata(files, repo_id, report=report)
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=100)
    return f"---\n{front}---\n\n" + _body(files, repo_id, report) + "\n"


def card_metadata(
    files: Sequence[tuple[str, Patch]], repo_id: str, *, report: Report | None = None
) -> dict[str, Any]:
    """The card's YAML metadata as a dict (see the module doc)."""
    tags = ["rws", "robustness"]
    for _, p in files:
        tags += [p.kind, str(p.provenance.get("method") or p.kind), *_facts(p)["corruptions"]]
    meta: dict[str, Any] = {"library_name": "rws", "tags": list(dict.fromkeys(tags))}
    bases = sorted({b for _, p in files if (b := base_model(p))})
    if bases:
        meta["base_model"] = bases[0] if len(bases) == 1 else bases
        meta["base_model_relation"] = "adapter"
    index = [
        {"name": _model_name(repo_id, files, v), "results": _results(v, report.settings)}
        for _, _, v in report_matches(files, report)
    ]
    if index:
        meta["model-index"] = index
    return meta


def base_model(patch: Patch) -> str | None:
    """The Hub repo of the base a patch was made against: a ``base_model`` tag, else an ``hf://``
    base checkpoint in its provenance; None when unknown."""
    base = patch.provenance.get("base")
    path = base.get("path") if isinstance(base, dict) else None
    for c in (patch.tags.get("base_model"), path if is_hub_ref(path) else None):
        if c:
            with contextlib.suppress(HubReferenceError):
                return repo_ref(c).repo_id
    return None


# --- facts --------------------------------------------------------------------------------------


def _facts(p: Patch) -> dict[str, Any]:
    """What a patch's metadata says about how it was made (tags win over provenance)."""
    prov, trained = p.provenance, p.provenance.get("trained") or {}
    corruptions: list[str] = []
    for c in (p.tags.get("corruption"), prov.get("corruption"), trained.get("corruptions")):
        items = c if isinstance(c, list) else str(c or "").split(",")
        corruptions += [str(x).strip() for x in items if str(x).strip()]
    return {
        "corruptions": list(dict.fromkeys(corruptions)),
        "arch": p.tags.get("arch") or trained.get("arch") or prov.get("arch"),
        "dataset": p.tags.get("dataset") or trained.get("data") or prov.get("dataset"),
        "severity": p.tags.get("severity") or trained.get("severity") or prov.get("severity"),
        "method": prov.get("method") or p.kind,
        "codec": prov.get("codec")
        or ",".join(sorted({t.encoded.codec for t in p.tensors.values()})),
    }


def report_matches(
    files: Sequence[tuple[str, Patch]], report: Report | None
) -> list[tuple[str, Patch, Variant]]:
    """``(file, patch, variant)`` for each report variant that applies exactly one of the patches
    (matched by fingerprint, so a renamed or re-scaled file still matches)."""
    if report is None:
        return []
    out = []
    for name, p in files:
        fp = p.fingerprint()
        for v in report.variants[1:]:
            if len(v.patches) == 1 and v.patches[0].get("fingerprint") == fp:
                out.append((name, p, v))
    return out


def _model_name(repo_id: str, files: Sequence[tuple[str, Patch]], v: Variant) -> str:
    short = repo_id.split("/")[-1]
    return short if len(files) == 1 else f"{short} ({v.name})"


def _data_name(settings: dict[str, Any]) -> str:
    """The dataset's name without any local folder (``cifar10:/data/x`` → ``cifar10``)."""
    return str(settings.get("data") or "data").split(":")[0]


def _results(v: Variant, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """The patched variant's accuracies as model-index results (one per dataset condition)."""
    data = _data_name(settings)
    sevs = ", ".join(str(s) for s in settings.get("severities") or [])

    def result(name: str, config: str | None, metrics: list[dict[str, Any]]) -> dict[str, Any]:
        dataset: dict[str, Any] = {"name": name, "type": data}
        if config:
            dataset["config"] = config
        dataset["split"] = "test"
        return {"task": dict(TASK), "dataset": dataset, "metrics": metrics}

    def metric(value: float, name: str, kind: str = "accuracy") -> dict[str, Any]:
        return {"type": kind, "value": round(float(value), 4), "name": name}

    out = [result(f"{data} (clean)", None, [metric(v.clean, "clean accuracy")])]
    for c, by_sev in v.corruptions.items():
        out.append(
            result(f"{data} + {c}, severities {sevs}", c,
                   [metric(_mean(by_sev.values()), "accuracy, mean over severities")])
        )  # fmt: skip
    if v.mean_corruption is not None:
        metrics = [metric(v.mean_corruption, "mean corruption accuracy")]
        if v.mce is not None:
            metrics.append(metric(v.mce, "mean corruption error (mCE)", "mce"))
        out.append(result(f"{data} + {len(v.corruptions)} corruptions", "all-corruptions", metrics))
    for attack, acc in v.robust.items():
        eps = settings.get("eps")
        how = f"{attack}, eps {eps:.4g} {settings.get('norm') or ''}".strip() if eps else attack
        out.append(
            result(f"{data} under {how}", f"attack-{attack}", [metric(acc, "robust accuracy")])
        )
    return out


def _mean(values: Any) -> float:
    vals = list(values)
    return sum(vals) / len(vals) if vals else float("nan")


# --- body ---------------------------------------------------------------------------------------


def _body(files: Sequence[tuple[str, Patch]], repo_id: str, report: Report | None) -> str:
    facts = [_facts(p) for _, p in files]
    what = sorted({c for f in facts for c in f["corruptions"]})
    arch = sorted({str(f["arch"]) for f in facts if f["arch"]})
    data = sorted({str(f["dataset"]) for f in facts if f["dataset"]})
    intro = "Weight-space robustness patch" + ("es" if len(files) > 1 else "")
    if what:
        intro += " against " + ", ".join(what)
    if arch or data:
        intro += (
            " for " + " / ".join(arch or ["a model"]) + (f" on {', '.join(data)}" if data else "")
        )
    lines = [f"# {repo_id.split('/')[-1]}", "", intro + ", made with rws.", ""]
    lines += _files_section(files, facts)
    lines += _base_section(files)
    lines += _use_section(files, repo_id)
    lines += _eval_section(files, report, repo_id)
    return "\n".join(lines).rstrip()


def _files_section(files: Sequence[tuple[str, Patch]], facts: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Files", "",
        "| file | kind | method | codec | targets | tensors | stored | scale | fingerprint |",
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for (name, p), f in zip(files, facts, strict=True):
        targets = ", ".join(f["corruptions"]) or "–"
        if f["severity"] is not None:
            targets += f" (severity {f['severity']})"
        lines.append(
            f"| `{name}` | {p.kind} | {f['method']} | {f['codec']} | {targets} | {len(p.tensors)} "
            f"| {_size(p.nbytes())} | {p.scale:g} | `{p.fingerprint()[:12]}` |"
        )
    return [*lines, ""]


def _base_section(files: Sequence[tuple[str, Patch]]) -> list[str]:
    lines = ["## Base model", ""]
    for name, p in files:
        base = p.provenance.get("base") if isinstance(p.provenance.get("base"), dict) else {}
        label = str(base.get("path") or "<memory>")
        label = "an in-memory model" if label.startswith("<") else f"`{label}`"
        sha = f" (file sha256 `{base['sha256'][:12]}…`)" if base.get("sha256") else ""
        size = f"{p.base['tensors']} tensors" if p.base.get("tensors") else ""
        lines.append(
            f"- `{name}` was extracted against {label}{sha}" + (f", {size}" if size else "")
        )
    lines += [
        "",
        "Every patched tensor carries the sha256 of the base tensor it was taken against: "
        "`rws apply` checks them and refuses another base (`--force` overrides), and "
        "`rws remove` checks that the base comes back.",
        "",
    ]
    return lines


def _use_section(files: Sequence[tuple[str, Patch]], repo_id: str) -> list[str]:
    name, p = files[0]
    ref = f"hf://{repo_id}/{name}"
    base = p.provenance.get("base")
    path = base.get("path") if isinstance(base, dict) else None
    repo = base_model(p)
    base_arg = path if is_hub_ref(path) else f"hf://{repo}" if repo else "base.safetensors"
    return [
        "## Use", "",
        "Command line; `hf://` references download through the Hugging Face cache, and "
        "`HF_HUB_OFFLINE=1` reads that cache only:", "",
        "```bash",
        f"rws apply {base_arg} {ref} -o patched.safetensors",
        f"rws apply {base_arg} {ref}:0.5 -o half.safetensors    # strength α = 0.5",
        f"rws remove patched.safetensors {ref} -o restored.safetensors",
        f"rws pull {repo_id} -o patches/                  # every file of this repo",
        "```", "",
        "Python:", "",
        "```python",
        "import rws",
        "",
        f'patch = rws.load("{ref}")',
        f'rws.apply_file("{base_arg}", [(patch, 1.0)], "patched.safetensors")',
        "with rws.patched(model, patch, scale=0.8):  # in memory; restored bit for bit on exit",
        "    ...",
        "```", "",
    ]  # fmt: skip


def _eval_section(
    files: Sequence[tuple[str, Patch]], report: Report | None, repo_id: str
) -> list[str]:
    lines = ["## Evaluation", ""]
    matches = report_matches(files, report)
    if report is None or not matches:
        ref = f"hf://{repo_id}/{files[0][0]}"
        return [*lines, f"No evaluation was published with this card; measure one with "
                f"`rws eval --arch ARCH --weights BASE --patch {ref}`."]  # fmt: skip
    s = report.settings
    base = report.base
    for name, _, v in matches:
        lines += [
            f"### `{name}` ({v.name})", "",
            "| metric | before | after | Δ | p (Holm) |", "|---|---|---|---|---|",
        ]  # fmt: skip
        vs = v.vs_base or {}
        lines.append(_row("clean", base.clean, v.clean, vs.get("clean")))
        for c, by_sev in v.corruptions.items():
            before = _mean(base.corruptions.get(c, {}).values())
            cmp = vs.get("corruptions", {}).get(c)
            lines.append(_row(f"{c} (mean over severities)", before, _mean(by_sev.values()), cmp))
        if v.mean_corruption is not None:
            lines.append(
                _row("mean corruption", base.mean_corruption, v.mean_corruption,
                     vs.get("mean_corruption"))
            )  # fmt: skip
        for attack, acc in v.robust.items():
            lines.append(
                _row(f"robust ({attack})", base.robust.get(attack), acc,
                     vs.get("robust", {}).get(attack))
            )  # fmt: skip
        lines.append("")
    lines.append(_settings_line(s))
    for w in s.get("warnings") or []:
        lines.append(f"\nWarning from the run: {w}")
    return lines


def _row(metric: str, before: float | None, after: float | None, cmp: Any) -> str:
    cmp = cmp if isinstance(cmp, dict) else {}
    delta, p = cmp.get("delta"), cmp.get("p_holm", cmp.get("p_value"))
    d = f"{100 * delta:+.1f} pt" if isinstance(delta, int | float) else "–"
    pv = f"{p:.2g}" if isinstance(p, int | float) else "–"
    if "p_holm" not in cmp and isinstance(p, int | float):
        pv += " (raw)"  # a report from before the Holm adjustment
    return f"| {metric} | {_pct(before)} | {_pct(after)} | {d} | {pv} |"


def _pct(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _settings_line(s: dict[str, Any]) -> str:
    parts = [f"Accuracy on {s.get('n_examples', '?')} test examples of {_data_name(s)}"]
    if s.get("corruptions"):
        sevs = ", ".join(str(x) for x in s.get("severities") or [])
        parts.append(f"corruptions at severities {sevs}")
    attacks = s.get("attack") or []
    if attacks:
        eps = s.get("eps")
        parts.append(
            f"attacks {', '.join(attacks)}" + (f" (ε = {eps:.4g}, {s.get('norm')})" if eps else "")
        )
    if s.get("corruptions") and s.get("table"):
        parts.append(f"corruption table {s['table']}")
    parts.append(f"seed {s.get('seed')}")
    approx = [c for c, k in (s.get("kernels") or {}).items() if k == "approximate"]
    if approx:
        parts.append(
            f"approximate kernels (not comparable with {reference_data(s.get('table'))} numbers): "
            + ", ".join(approx)
        )
    if s.get("inputs_sha256"):
        parts.append(f"inputs sha256 `{str(s['inputs_sha256'])[:12]}…`")
    parts.append(f"rws {s.get('rws_version', '?')}")
    return (
        "; ".join(parts)
        + ". Before: the unpatched model; Δ in percentage points (pt); p: exact McNemar test "
        "for single cells (clean, an attack), Wilcoxon signed-rank test on per-image mean "
        "correctness for rows pooled over severities or corruptions, Holm-adjusted over all "
        "the rows `rws eval` tested for the patch."
    )


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n:.1f} GiB"
