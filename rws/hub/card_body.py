"""The Markdown body of a patch repo's model card: files, base model, usage, evaluation tables.

Each patch's evaluation is one ``### `FILE` (LABEL, `FINGERPRINT`)`` section, so that a later push
to the same repo can keep the sections of the patches it does not replace (:func:`kept_sections`).
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rws.errors import HubReferenceError
from rws.io.hub_ref import is_hub_ref, repo_ref
from rws.robustness.corruptions.params import reference_data

if TYPE_CHECKING:
    from rws.patching.patch import Patch
    from rws.robustness.report import Report, Variant

_SECTION = re.compile(
    r"^### `(?P<name>[^`]+)` \([^\n]*`(?P<fp>[0-9a-f]{12})`\)\n.*?(?=^##|\Z)", re.S | re.M
)


def kept_sections(old_card: str, files: Sequence[tuple[str, Patch]], fresh: set[str]) -> list[str]:
    """The evaluation sections of ``old_card`` for patches still in ``files`` with the same
    content (fingerprint) and not evaluated anew (``fresh``), in their old order."""
    current = {name: p.fingerprint()[:12] for name, p in files}
    return [
        m.group(0).rstrip() + "\n"
        for m in _SECTION.finditer(old_card)
        if m["name"] not in fresh and current.get(m["name"]) == m["fp"]
    ]


def render_body(
    files: Sequence[tuple[str, Patch]],
    repo_id: str,
    report: Report | None,
    *,
    base_models: Sequence[str] = (),
    kept: Sequence[str] = (),
) -> str:
    """The card's Markdown body for every patch in the repo (``files``): ``report`` gives the new
    evaluation sections, ``kept`` the sections kept from the previous card."""
    facts = [facts_of(p) for _, p in files]
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
    lines += _base_section(files, base_models)
    lines += _use_section(files, repo_id, base_models)
    lines += _eval_section(files, report, repo_id, kept)
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


def _base_section(files: Sequence[tuple[str, Patch]], base_models: Sequence[str]) -> list[str]:
    lines = ["## Base model", ""]
    if base_models:
        links = ", ".join(f"[{b}](https://huggingface.co/{b})" for b in base_models)
        lines += [f"Patches for {links}.", ""]
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


def _use_section(
    files: Sequence[tuple[str, Patch]], repo_id: str, base_models: Sequence[str]
) -> list[str]:
    name, p = files[-1]
    ref = f"hf://{repo_id}/{name}"
    base = p.provenance.get("base")
    path = base.get("path") if isinstance(base, dict) else None
    repo = base_model(p) or (base_models[0] if len(base_models) == 1 else None)
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
    files: Sequence[tuple[str, Patch]], report: Report | None, repo_id: str, kept: Sequence[str]
) -> list[str]:
    lines = ["## Evaluation", ""]
    matches = report_matches(files, report)
    if report is None or not matches:
        if kept:
            return [*lines, *kept]
        ref = f"hf://{repo_id}/{files[-1][0]}"
        return [*lines, f"No evaluation was published with this card; measure one with "
                f"`rws eval --arch ARCH --weights BASE --patch {ref}`."]  # fmt: skip
    s = report.settings
    base = report.base
    lines += list(kept)
    for name, p, v in matches:
        lines += [
            f"### `{name}` ({v.name}, `{p.fingerprint()[:12]}`)", "",
            "| metric | before | after | Δ | p (Holm) |", "|---|---|---|---|---|",
        ]  # fmt: skip
        vs = v.vs_base or {}
        lines.append(_row("clean", base.clean, v.clean, vs.get("clean")))
        for c, by_sev in v.corruptions.items():
            before = mean(base.corruptions.get(c, {}).values())
            cmp = vs.get("corruptions", {}).get(c)
            lines.append(_row(f"{c} (mean over severities)", before, mean(by_sev.values()), cmp))
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
        lines += ["", settings_line(s)]
        lines += [f"\nWarning from the run: {w}" for w in s.get("warnings") or []]
        lines.append("")
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


def settings_line(s: dict[str, Any]) -> str:
    parts = [f"Accuracy on {s.get('n_examples', '?')} test examples of {data_name(s)}"]
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


# --- facts --------------------------------------------------------------------------------------


def facts_of(p: Patch) -> dict[str, Any]:
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


def data_name(settings: dict[str, Any]) -> str:
    """The dataset's name without any local folder (``cifar10:/data/x`` → ``cifar10``)."""
    return str(settings.get("data") or "data").split(":")[0]


def mean(values: Any) -> float:
    """The mean of ``values`` (NaN when empty)."""
    vals = list(values)
    return sum(vals) / len(vals) if vals else float("nan")
