"""Hugging Face Hub client: pulls through the standard cache, pushes with a generated card.

References name a file or a repo (model repos only)::

    hf://ORG/NAME/FILE[@REV]    one file (FILE may hold folders); REV: a branch, tag or commit
    hf://ORG/NAME@REV/FILE      the same, as huggingface_hub's file system spells it
    hf://ORG/NAME[@REV]         a repo: its checkpoint folder, or its only ``.safetensors`` file

Every command and API call that reads a patch or a checkpoint takes them: ``Patch.load`` and
``open_checkpoint`` pass their argument through :func:`rws.io.hub_fetch.resolve_path`, which
downloads into the standard Hugging Face cache (``hf_hub_download``) and returns the local path;
plain paths pass through untouched. Provenance names a cached file ``hf://ORG/NAME/FILE@COMMIT``
(:func:`rws.io.hub_ref.hub_reference`).

Settings are read at call time (the client reads its environment once, at import) and passed to
the client explicitly: the endpoint is ``endpoint=`` (``--endpoint``), else ``RWS_HF_ENDPOINT``,
else ``HF_ENDPOINT``, else https://huggingface.co; ``HF_HUB_OFFLINE=1`` uses the cache only.
Tokens: whatever huggingface_hub finds itself (``HF_TOKEN`` or ``hf auth login``); rws never
passes, stores or logs one.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from rws.errors import (
    HubAuthError,
    HubOfflineError,
    HubReferenceError,
    OutputPathError,
    PatchFormatError,
    UsageError,
)
from rws.hub.card import config_json, eval_results_files, model_card, report_matches
from rws.io.atomic import atomic_output
from rws.io.hub_fetch import (
    DEFAULT_REVISION,
    client_info,
    fetch_file,
    fetch_snapshot,
    hub_endpoint,
    is_offline,
    translate_errors,
)
from rws.io.hub_ref import HubRef, repo_ref
from rws.patching._hub import register_pusher
from rws.patching.patch import Patch
from rws.robustness.report import Report

logger = logging.getLogger(__name__)

_COMMIT = re.compile(r"[0-9a-f]{40}\Z")


@dataclass(frozen=True)
class PushResult:
    """What :func:`push` committed: ``files`` at ``commit`` on branch ``revision``."""

    repo_id: str
    revision: str
    commit: str
    url: str
    files: tuple[str, ...]
    pr_url: str | None = None


def pull(
    ref: str,
    *,
    revision: str | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    endpoint: str | None = None,
) -> list[Path]:
    """Download a file or a whole repo through the Hugging Face cache.

    Args:
        ref: ``ORG/NAME[/FILE][@REV]``, with or without ``hf://``.
        revision: branch, tag or commit (instead of ``@REV``).
        output_dir: also copy the files here (atomically), keeping their paths in the repo.
        endpoint: the Hub URL (see the module doc).

    Returns:
        The local files: in ``output_dir`` when given, else in the cache.

    Raises:
        HubReferenceError: a malformed reference, or two different revisions.
        OutputPathError: ``output_dir`` is a file.
        HubError: see :func:`rws.io.hub_fetch.download`.

    Example:
        >>> rws.pull("org/resnet20-fog/fog.rws.safetensors", output_dir="patches")  # doctest: +SKIP
    """
    parsed = repo_ref(ref)
    if revision is not None:
        if parsed.revision not in (None, revision):
            raise HubReferenceError(ref, f"names revision {parsed.revision!r}, not {revision!r}")
        parsed = replace(parsed, revision=revision)
    url = hub_endpoint(endpoint)
    if parsed.filename is not None:
        files = [(parsed.filename, fetch_file(parsed, url))]
    else:
        folder = fetch_snapshot(parsed, url, allow=None)
        found = sorted(p for p in folder.rglob("*") if p.is_file())
        files = [(p.relative_to(folder).as_posix(), p) for p in found]
    if output_dir is None:
        return [p for _, p in files]
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise OutputPathError(out, "is a file; give a folder")
    copies = []
    for rel, src in files:
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(dest) as tmp:
            shutil.copyfile(src, tmp)
        copies.append(dest)
    return copies


# --- push --------------------------------------------------------------------------------------


def push(
    patches: Sequence[str | os.PathLike[str] | Patch],
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    message: str | None = None,
    report: Report | str | os.PathLike[str] | None = None,
    endpoint: str | None = None,
    create_pr: bool = False,
    base_model: str | None = None,
    dataset: str | None = None,
    license: str | None = None,
    eval_results: bool = False,
) -> PushResult:
    """Upload patches, a model card (``README.md``) and a ``config.json`` to a Hub model repo,
    in one commit.

    Creates the repo, and the branch ``revision``, when missing. The card
    (:func:`rws.hub.card.model_card`) carries the Hub's metadata (``library_name: rws``, tags,
    ``base_model``, ``model-index`` results from ``report``) and a before/after table; an existing
    card is updated, keeping the rows and results of the patches already in the repo.

    Args:
        patches: patch files (local or ``hf://``), uploaded as they are, or :class:`Patch` objects,
            saved as they are now; each is stored under its file name (``LABEL.rws.safetensors``
            for a patch that was never a file).
        repo_id: ``ORG/NAME``.
        private: create the repo private (no effect on an existing repo).
        revision: the branch to commit to; default ``main``.
        message: the commit message.
        report: an ``rws eval`` report (:class:`Report` or its JSON file).
        endpoint: the Hub URL (see the module doc).
        create_pr: open a pull request with the commit instead of committing to the branch.
        base_model: the Hub repo of the model the patches apply to (``base_model`` on the card).
        dataset: the Hub dataset id of the evaluation data, ``ORG/NAME[:TASK]`` (``model-index``).
        license: a Hub license id for the card.
        eval_results: also write ``.eval_results/FILE.yaml`` for ``dataset`` (a benchmark id),
            so the results appear on the benchmark's leaderboard.

    Raises:
        HubReferenceError: a malformed repo or dataset id. UsageError: two patches with one file
            name, a commit as ``revision``, ``create_pr`` on another branch than ``main``, or
            ``eval_results`` without ``dataset`` and ``report``.
        PatchFormatError, InputFileError: a patch that cannot be read (nothing is uploaded).
        HubAuthError: no token (``hf auth login`` or ``HF_TOKEN``), or the Hub refused it.
        HubOfflineError, HubConnectionError, HubError: offline, unreachable, or refused.

    Example:
        >>> rws.push(["fog.rws.safetensors"], "org/resnet20-fog", report="eval.json")  # doctest: +SKIP
    """
    ref = repo_ref(repo_id)
    if ref.filename is not None or ref.revision is not None:
        raise HubReferenceError(repo_id, "expected ORG/NAME (use revision= for the branch)")
    if revision is not None and _COMMIT.match(revision):
        raise UsageError(f"revision {revision!r}: pushing needs a branch name, not a commit")
    branch = revision or DEFAULT_REVISION
    if create_pr and branch != DEFAULT_REVISION:
        raise UsageError(f"--create-pr opens a pull request against main, not {branch!r}")
    if eval_results and (dataset is None or report is None):
        raise UsageError("eval results need the benchmark's dataset id (--dataset) and --report")
    url = hub_endpoint(endpoint)
    items = _named_patches(patches)
    rep = _load_report(report)
    pairs = [(name, p) for name, p, _ in items]
    model_card(pairs, ref.repo_id, report=rep, base_model=base_model, dataset=dataset)  # checks
    if rep is not None and not report_matches(pairs, rep):
        logger.warning("the report evaluates none of these patches (by fingerprint): no results")
    if is_offline():
        raise HubOfflineError(ref.uri, "cannot push while HF_HUB_OFFLINE is set; unset it first")
    from huggingface_hub import CommitOperationAdd, HfApi, get_token

    if get_token() is None:
        raise HubAuthError(
            ref.repo_id,
            "no Hugging Face token: log in with `hf auth login` or set HF_TOKEN "
            "(pushing needs write access)",
        )
    api = HfApi(endpoint=url, **client_info())
    with translate_errors(ref, url, offline=False):
        api.create_repo(ref.repo_id, private=private or None, exist_ok=True)
        if branch != DEFAULT_REVISION:
            api.create_branch(ref.repo_id, branch=branch, exist_ok=True)
    held, old_card, old_config = _repo_state(api, HubRef(ref.repo_id, None, branch), url)
    every = [(n, p) for n, p in held if n not in {m for m, _ in pairs}] + pairs
    extra = {"README.md": model_card(every, ref.repo_id, report=rep, existing=old_card,
                                     base_model=base_model, dataset=dataset,
                                     license=license).encode()}  # fmt: skip
    if (config := config_json(every, old_config)) is not None:
        extra["config.json"] = config
    if eval_results:
        extra.update(eval_results_files(pairs, rep, dataset))  # type: ignore[arg-type]
    names = [name for name, _ in pairs] + list(extra)
    with tempfile.TemporaryDirectory(prefix="rws-push-") as tmp:
        ops = []
        for name, p, path in items:
            if path is None:  # a Patch object: upload what it holds now
                path = os.path.join(tmp, name)
                p.save(path)
            ops.append(CommitOperationAdd(path_in_repo=name, path_or_fileobj=path))
        ops += [CommitOperationAdd(path_in_repo=n, path_or_fileobj=b) for n, b in extra.items()]
        logger.info("pushing %s to %s@%s on %s", ", ".join(names), ref.repo_id, branch, url)
        with translate_errors(ref, url, offline=False):
            info = api.create_commit(
                ref.repo_id, ops, revision=branch, create_pr=create_pr or None,
                commit_message=message or f"Upload {len(items)} rws patch(es) and model card",
            )  # fmt: skip
    return PushResult(ref.repo_id, branch, info.oid, str(info.commit_url), tuple(names),
                      info.pr_url)  # fmt: skip


def _repo_state(
    api: object, ref: HubRef, url: str
) -> tuple[list[tuple[str, Patch]], str | None, bytes | None]:
    """What the branch holds now: its patches (earlier pushes), its card and its config.json."""
    with translate_errors(ref, url, offline=False):
        info = api.model_info(ref.repo_id, revision=ref.revision)  # type: ignore[attr-defined]
    names = [s.rfilename for s in info.siblings or []]
    commit = info.sha or ref.revision

    def get(name: str) -> Path:
        return fetch_file(HubRef(ref.repo_id, name, commit), url)

    held = []
    for name in names:
        if name.endswith(".safetensors"):
            try:
                held.append((name, Patch.load(get(name))))
            except PatchFormatError:
                logger.debug("%s: not a patch, left out of the card", name)
    card = get("README.md").read_text(encoding="utf-8") if "README.md" in names else None
    config = get("config.json").read_bytes() if "config.json" in names else None
    return held, card, config


def _named_patches(
    patches: Sequence[str | os.PathLike[str] | Patch],
) -> list[tuple[str, Patch, str | None]]:
    """``(name in the repo, patch, file to upload or None to save the object)`` per patch."""
    if not patches:
        raise UsageError("push needs at least one patch")
    items: list[tuple[str, Patch, str | None]] = []
    for p in patches:
        patch = p if isinstance(p, Patch) else Patch.load(p)
        name = os.path.basename(patch.source) if patch.source else f"{patch.label}.rws.safetensors"
        if name in [n for n, _, _ in items] or name == "README.md":
            raise UsageError(f"two files would be stored as {name!r}; rename one")
        items.append((name, patch, None if isinstance(p, Patch) else patch.source))
    return items


def _load_report(report: Report | str | os.PathLike[str] | None) -> Report | None:
    if report is None or not isinstance(report, str | os.PathLike):
        return report
    return Report.load_json(report)


register_pusher(push)  # Patch.push_to_hub (rws.patching cannot import this layer)
