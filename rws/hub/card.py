"""Model cards for patch repos on the Hub, built with ``huggingface_hub``'s ``ModelCard``.

Metadata (``ModelCardData``): ``library_name: rws``, ``pipeline_tag: image-classification``,
``tags`` (rws, robustness, each patch's kind and method, the corruptions it targets),
``base_model`` with ``base_model_relation: adapter`` when the base is known (``base_model=``, a
``base_model`` tag, or an ``hf://`` base in the provenance), ``license`` when given, ``datasets``
and ``model-index`` results (``EvalResult``) when the evaluation data has a Hub dataset id: the
id goes in ``dataset.type``, the corruption in ``dataset.config``, severities in ``dataset.args``,
the attack's ε, norm and steps and the patch (file, fingerprint, α) in ``metrics.args``. Data
without a Hub id gives no ``model-index`` (its results stay in the body's tables).

A card is updated, not replaced, as PEFT does: :func:`model_card` takes the repo's current card
and keeps its other metadata, its tags and base models, and the results and evaluation sections of
the patches that stay in the repo unchanged (same fingerprint) and are not evaluated anew.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rws._version import __version__
from rws.errors import HubReferenceError
from rws.hub.card_body import (
    base_model,
    data_name,
    facts_of,
    kept_sections,
    mean,
    render_body,
    report_matches,
)
from rws.io.hub_ref import repo_ref

if TYPE_CHECKING:
    from huggingface_hub import EvalResult, ModelCardData

    from rws.patching.patch import Patch
    from rws.robustness.report import Report, Variant

__all__ = ["base_model", "card_data", "config_json", "eval_results_files", "model_card",
           "parse_benchmark", "report_matches"]  # fmt: skip

TASK = ("image-classification", "Image Classification")


def parse_benchmark(text: str) -> tuple[str, str]:
    """``ORG/NAME[:TASK]`` → ``(dataset id, task id)``; the task defaults to ``default``.

    Raises:
        HubReferenceError: not a dataset id.
    """
    ident, _, task = text.partition(":")
    if "://" in text or ident.count("/") != 1 or "@" in ident:
        raise HubReferenceError(text, "expected a Hub dataset id ORG/NAME[:TASK]")
    ref = repo_ref(ident)
    return ref.repo_id, task or "default"


def model_card(
    files: Sequence[tuple[str, Patch]],
    repo_id: str,
    *,
    report: Report | None = None,
    existing: str | None = None,
    base_model: str | None = None,
    dataset: str | None = None,
    license: str | None = None,
) -> str:
    """The ``README.md`` of a repo holding ``files`` (``(name in the repo, patch)`` pairs).

    Args:
        files: every patch the repo will hold (earlier ones first) and its file name.
        repo_id: ``ORG/NAME`` of the repo.
        report: an ``rws eval`` report; its variants that apply exactly one of the patches (matched
            by fingerprint) give new results and before/after tables.
        existing: the repo's current ``README.md``, updated rather than replaced.
        base_model: the Hub repo of the model the patches apply to.
        dataset: the Hub dataset id of the evaluation data (``ORG/NAME[:TASK]``).
        license: a Hub license id (``apache-2.0``, ``mit``, ``other`` …).

    Example:
        >>> patch = rws.load("fog.rws.safetensors")  # doctest: +SKIP
        >>> card = model_card([("fog.rws.safetensors", patch)], "org/fog")  # doctest: +SKIP
    """
    from huggingface_hub import ModelCard

    old = ModelCard(existing, ignore_metadata_errors=True) if existing else None
    data = card_data(
        files, repo_id, report=report, previous=old.data if old else None,
        base_model=base_model, dataset=dataset, license=license,
    )  # fmt: skip
    fresh = {name for name, _, _ in report_matches(files, report)}
    kept = kept_sections(old.text if old else "", files, fresh)
    bases = data.base_model if isinstance(data.base_model, list) else [data.base_model]
    body = render_body(files, repo_id, report, base_models=[b for b in bases if b], kept=kept)
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")
    return str(card)


def card_data(
    files: Sequence[tuple[str, Patch]],
    repo_id: str,
    *,
    report: Report | None = None,
    previous: ModelCardData | None = None,
    base_model: str | None = None,
    dataset: str | None = None,
    license: str | None = None,
) -> ModelCardData:
    """The card's metadata (see the module doc); ``previous`` is the current card's."""
    from huggingface_hub import ModelCardData

    prev = previous.to_dict() if previous is not None else {}
    old_results = list(previous.eval_results or []) if previous is not None else []
    for key in ("model-index", "eval_results", "model_name"):
        prev.pop(key, None)
    tags = [*_listed(prev.pop("tags", None)), "rws", "robustness"]
    for _, p in files:
        tags += [p.kind, str(facts_of(p)["method"]), *facts_of(p)["corruptions"]]
    bases = _listed(prev.pop("base_model", None))
    if base_model is not None:
        bases.append(_repo_id(base_model))
    bases += sorted({b for _, p in files if (b := _base_of(p))})
    bases = list(dict.fromkeys(bases))
    ident = parse_benchmark(dataset)[0] if dataset else None
    datasets = list(
        dict.fromkeys([*_listed(prev.pop("datasets", None)), *([ident] if ident else [])])
    )
    datasets = [d for d in datasets if d]
    matches = report_matches(files, report)
    fresh = {name for name, _, _ in matches}
    current = {name: p.fingerprint()[:12] for name, p in files}
    results = [
        r for r in old_results
        if (a := r.metric_args or {}).get("patch") not in fresh
        and current.get(a.get("patch")) == a.get("fingerprint")
    ]  # fmt: skip
    if ident is not None and report is not None:
        for name, p, v in matches:
            results += _results(name, p, v, report.settings, ident)
    for key in ("library_name", "pipeline_tag", "base_model_relation", "license"):
        prev.pop(key, None)
    return ModelCardData(
        library_name="rws",
        pipeline_tag=TASK[0],
        license=license or (previous.license if previous is not None else None),
        tags=list(dict.fromkeys(tags)),
        base_model=(bases[0] if len(bases) == 1 else bases) or None,
        base_model_relation="adapter" if bases else None,
        datasets=datasets or None,
        model_name=((previous.model_name if previous else None) or repo_id.split("/")[-1])
        if results
        else None,
        eval_results=results or None,
        **prev,
    )


def eval_results_files(
    files: Sequence[tuple[str, Patch]], report: Report | None, benchmark: str
) -> dict[str, bytes]:
    """``.eval_results/FILE.yaml`` per evaluated patch for a benchmark ``ORG/NAME[:TASK]``: the
    patched model's mean corruption accuracy (else its first attack's robust accuracy, else its
    clean accuracy), with notes saying which and how it was measured."""
    import yaml
    from huggingface_hub import EvalResultEntry, eval_result_entries_to_yaml

    ident, task = parse_benchmark(benchmark)
    out: dict[str, bytes] = {}
    for name, _, v in report_matches(files, report):
        s = report.settings  # type: ignore[union-attr]
        if v.mean_corruption is not None:
            value, what = (
                v.mean_corruption,
                "mean corruption accuracy over "
                + ", ".join(v.corruptions)
                + f" at severities {', '.join(map(str, s.get('severities') or []))}",
            )
        elif v.robust:
            attack, value = next(iter(v.robust.items()))
            what = f"robust accuracy under {attack} (eps {s.get('eps')}, {s.get('norm')})"
        else:
            value, what = v.clean, "clean accuracy"
        alpha = v.patches[0].get("alpha")
        notes = (f"rws patch {name} at alpha {alpha}: {what}; {s.get('n_examples')} test "
                 f"examples, seed {s.get('seed')}, rws {s.get('rws_version', __version__)}")  # fmt: skip
        entry = EvalResultEntry(dataset_id=ident, task_id=task, value=round(value, 4), notes=notes)
        text = yaml.safe_dump(eval_result_entries_to_yaml([entry]), sort_keys=False)
        out[f".eval_results/{name.removesuffix('.safetensors')}.yaml"] = text.encode()
    return out


def config_json(files: Sequence[tuple[str, Patch]], existing: bytes | None = None) -> bytes | None:
    """A small ``config.json`` (the file the Hub counts downloads by) listing the patches; None
    when the repo already holds a ``config.json`` that rws did not write (it is left alone)."""
    if existing is not None:
        try:
            old = json.loads(existing)
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(old, dict) or old.get("library_name") != "rws":
            return None
    patches = [{"file": n, "kind": p.kind, "fingerprint": p.fingerprint()} for n, p in files]
    doc = {"library_name": "rws", "rws_version": __version__, "patches": patches}
    return (json.dumps(doc, indent=2) + "\n").encode()


# --- helpers ------------------------------------------------------------------------------------


def _listed(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _repo_id(text: str) -> str:
    ref = repo_ref(text)
    if ref.filename or ref.revision:
        raise HubReferenceError(text, "expected a model repo ORG/NAME as the base model")
    return ref.repo_id


def _base_of(p: Patch) -> str | None:
    return base_model(p)


def _results(
    name: str, p: Patch, v: Variant, settings: dict[str, Any], ident: str
) -> list[EvalResult]:
    """The patched variant's accuracies as ``EvalResult``s on the dataset ``ident``."""
    from huggingface_hub import EvalResult

    data = data_name(settings)
    sevs = list(settings.get("severities") or [])
    who = {"patch": name, "fingerprint": p.fingerprint()[:12], "alpha": v.patches[0].get("alpha")}

    def result(value: float, metric: str, dataset_name: str, **kw: Any) -> EvalResult:
        return EvalResult(
            task_type=TASK[0], task_name=TASK[1], dataset_type=ident, dataset_name=dataset_name,
            dataset_split="test", metric_type="accuracy", metric_value=round(float(value), 4),
            metric_name=metric, metric_args={**who, **kw.pop("metric_args", {})}, **kw,
        )  # fmt: skip

    out = [result(v.clean, "clean accuracy", data)]
    for c, by_sev in v.corruptions.items():
        out.append(result(mean(by_sev.values()), "accuracy, mean over severities",
                          f"{data} ({c})", dataset_config=c,
                          dataset_args={"severities": sevs, "table": settings.get("table")}))  # fmt: skip
    if v.mean_corruption is not None:
        args = {"corruptions": list(v.corruptions), "severities": sevs}
        out.append(result(v.mean_corruption, "mean corruption accuracy",
                          f"{data} ({len(v.corruptions)} corruptions)", dataset_args=args))  # fmt: skip
        if v.mce is not None:
            mce = result(v.mce, "mean corruption error (mCE)",
                         f"{data} ({len(v.corruptions)} corruptions)", dataset_args=args)  # fmt: skip
            mce.metric_type = "mce"
            out.append(mce)
    for attack, acc in v.robust.items():
        how = {"attack": attack, "eps": settings.get("eps"), "norm": settings.get("norm"),
               "steps": settings.get("steps")}  # fmt: skip
        out.append(result(acc, f"robust accuracy ({attack})", data, metric_args=how))
    return out
