"""The Hugging Face Hub: ``hf://`` references, pulls through the standard cache, pushes with a card.

References name a file or a repo (model repos only)::

    hf://ORG/NAME/FILE[@REV]    one file (FILE may hold folders); REV: a branch, tag or commit
    hf://ORG/NAME@REV/FILE      the same, as huggingface_hub's file system spells it
    hf://ORG/NAME[@REV]         a repo: its checkpoint folder, or its only ``.safetensors`` file

Every command and API call that reads a patch or a checkpoint takes them: ``Patch.load`` and
``open_checkpoint`` pass their argument through :func:`resolve_path`, which downloads into the
standard Hugging Face cache (``hf_hub_download``) and returns the local path; plain paths pass
through untouched. Provenance names a cached file ``hf://ORG/NAME/FILE@COMMIT``
(:func:`rws.hub_ref.hub_reference`).

Settings are read at call time (the client reads its environment once, at import) and passed to
the client explicitly: the endpoint is ``endpoint=`` (``--endpoint``), else ``RWS_HF_ENDPOINT``,
else ``HF_ENDPOINT``, else https://huggingface.co; ``HF_HUB_OFFLINE=1`` uses the cache only.
Tokens: whatever huggingface_hub finds itself (``HF_TOKEN`` or ``hf auth login``); rws never
passes, stores or logs one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rws.errors import (
    HubAuthError,
    HubConnectionError,
    HubError,
    HubFileNotFoundError,
    HubOfflineError,
    HubReferenceError,
    HubRepoNotFoundError,
    HubRevisionNotFoundError,
    OutputPathError,
    UsageError,
)
from rws.hub_ref import HubRef, is_hub_ref, parse_ref, repo_ref

if TYPE_CHECKING:
    from rws.patch import Patch
    from rws.robustness.report import Report

logger = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_REVISION = "main"
OFFLINE_MISS = (
    "not in the Hugging Face cache and HF_HUB_OFFLINE is set; fetch it once online "
    "(rws pull) or unset HF_HUB_OFFLINE"
)
_COMMIT = re.compile(r"[0-9a-f]{40}\Z")


@dataclass(frozen=True)
class PushResult:
    """What :func:`push` committed: ``files`` at ``commit`` on branch ``revision``."""

    repo_id: str
    revision: str
    commit: str
    url: str
    files: tuple[str, ...]


# --- settings, read at call time ---------------------------------------------------------------


def hub_endpoint(endpoint: str | None = None) -> str:
    """``endpoint``, else ``RWS_HF_ENDPOINT``, else ``HF_ENDPOINT``, else huggingface.co.

    Raises:
        UsageError: not an http(s) URL.
    """
    env = os.environ.get("RWS_HF_ENDPOINT") or os.environ.get("HF_ENDPOINT")
    url = (endpoint or env or DEFAULT_ENDPOINT).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"Hub endpoint {url!r}: expected an http:// or https:// URL")
    return url


def is_offline() -> bool:
    """Offline mode: ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is true now, or was when
    huggingface_hub was imported (its session then refuses every request)."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    if value.strip().upper() in ("1", "ON", "YES", "TRUE"):
        return True
    import sys

    constants = sys.modules.get("huggingface_hub.constants")
    return bool(constants is not None and constants.HF_HUB_OFFLINE)


# --- downloads ---------------------------------------------------------------------------------


def resolve_path(
    path: str | os.PathLike[str], *, endpoint: str | None = None
) -> str | os.PathLike[str]:
    """The local path to read ``path`` from: an ``hf://`` reference is fetched through the
    Hugging Face cache (see :func:`download`); anything else is returned untouched.

    Raises:
        HubReferenceError, HubError: see :func:`parse_ref` and :func:`download`.
    """
    if not is_hub_ref(path):
        return path
    return download(parse_ref(path), endpoint=endpoint)


def download(ref: HubRef, *, endpoint: str | None = None) -> Path:
    """Fetch a reference into the Hugging Face cache (or find it there) and return its path.

    A file reference gives the file. A repo reference downloads the repo's ``*.safetensors`` and
    ``*.json`` files and gives the snapshot folder when it holds a checkpoint
    (``model.safetensors`` or a sharded index), else its only ``.safetensors`` file.

    Raises:
        HubRepoNotFoundError, HubRevisionNotFoundError, HubFileNotFoundError: not on the Hub.
        HubAuthError: a gated repo, or the Hub refused the token.
        HubOfflineError: offline mode and not in the cache.
        HubConnectionError: the endpoint cannot be reached and the file is not cached.
        HubReferenceError: a repo reference to a repo holding several patches.
    """
    url = hub_endpoint(endpoint)
    if ref.filename is not None:
        return _fetch_file(ref, url)
    folder = _fetch_snapshot(ref, url, allow=["*.safetensors", "*.json"])
    if (folder / "model.safetensors.index.json").is_file() or (
        folder / "model.safetensors"
    ).is_file():
        return folder
    found = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.safetensors"))
    if len(found) == 1:
        return folder / found[0]
    if not found:
        raise HubFileNotFoundError(
            ref.uri, ref.repo_id, "*.safetensors", ref.revision or DEFAULT_REVISION, []
        )
    raise HubReferenceError(
        ref.uri,
        f"the repo holds {len(found)} .safetensors files ({', '.join(found)}); name one, "
        f"e.g. {replace(ref, filename=found[0]).uri}",
    )


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
        HubError: see :func:`download`.

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
        files = [(parsed.filename, _fetch_file(parsed, url))]
    else:
        folder = _fetch_snapshot(parsed, url, allow=None)
        found = sorted(p for p in folder.rglob("*") if p.is_file())
        files = [(p.relative_to(folder).as_posix(), p) for p in found]
    if output_dir is None:
        return [p for _, p in files]
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise OutputPathError(out, "is a file; give a folder")
    from rws.atomic import atomic_output

    copies = []
    for rel, src in files:
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(dest) as tmp:
            shutil.copyfile(src, tmp)
        copies.append(dest)
    return copies


def _client_info() -> dict[str, str]:
    from rws import __version__

    return {"library_name": "rws", "library_version": __version__}


def _fetch_file(ref: HubRef, url: str) -> Path:
    from huggingface_hub import hf_hub_download

    offline = is_offline()
    logger.info("fetching %s from %s%s", ref.uri, url, " (offline: cache only)" if offline else "")
    with _translated(ref, url, offline=offline):
        path = hf_hub_download(
            ref.repo_id, ref.filename or "", revision=ref.revision, endpoint=url,
            local_files_only=offline, **_client_info(),
        )  # fmt: skip
    return Path(path)


def _fetch_snapshot(ref: HubRef, url: str, *, allow: list[str] | None) -> Path:
    from huggingface_hub import snapshot_download

    offline = is_offline()
    logger.info("fetching %s from %s%s", ref.uri, url, " (offline: cache only)" if offline else "")
    with _translated(ref, url, offline=offline):
        path = snapshot_download(
            ref.repo_id, revision=ref.revision, endpoint=url, allow_patterns=allow,
            local_files_only=offline, **_client_info(),
        )  # fmt: skip
    return Path(path)


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
) -> PushResult:
    """Upload patches and a generated model card (``README.md``) to a Hub model repo, one commit.

    Creates the repo, and the branch ``revision``, when missing. The card
    (:func:`rws.hub_card.model_card`) carries the Hub's metadata (``library_name: rws``, tags,
    ``base_model``, ``model-index`` results from ``report``) and a before/after table.

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

    Raises:
        HubReferenceError: a malformed repo id. UsageError: two patches with one file name, or a
            commit as ``revision``.
        PatchFormatError, InputFileError: a patch that cannot be read (nothing is uploaded).
        HubAuthError: no token (``hf auth login`` or ``HF_TOKEN``), or the Hub refused it.
        HubOfflineError, HubConnectionError, HubError: offline, unreachable, or refused.

    Example:
        >>> rws.push(["fog.rws.safetensors"], "org/resnet20-fog", report="eval.json")  # doctest: +SKIP
    """
    from rws.hub_card import model_card, report_matches

    ref = repo_ref(repo_id)
    if ref.filename is not None or ref.revision is not None:
        raise HubReferenceError(repo_id, "expected ORG/NAME (use revision= for the branch)")
    if revision is not None and _COMMIT.match(revision):
        raise UsageError(f"revision {revision!r}: pushing needs a branch name, not a commit")
    branch = revision or DEFAULT_REVISION
    url = hub_endpoint(endpoint)
    items = _named_patches(patches)
    rep = _load_report(report)
    pairs = [(name, p) for name, p, _ in items]
    card = model_card(pairs, ref.repo_id, report=rep)
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
    api = HfApi(endpoint=url, **_client_info())
    names = [name for name, _ in pairs] + ["README.md"]
    with tempfile.TemporaryDirectory(prefix="rws-push-") as tmp:
        ops = []
        for name, p, path in items:
            if path is None:  # a Patch object: upload what it holds now
                path = os.path.join(tmp, name)
                p.save(path)
            ops.append(CommitOperationAdd(path_in_repo=name, path_or_fileobj=path))
        ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode()))
        logger.info("pushing %s to %s@%s on %s", ", ".join(names), ref.repo_id, branch, url)
        with _translated(ref, url, offline=False):
            api.create_repo(ref.repo_id, private=private or None, exist_ok=True)
            if branch != DEFAULT_REVISION:
                api.create_branch(ref.repo_id, branch=branch, exist_ok=True)
            info = api.create_commit(
                ref.repo_id, ops, revision=branch,
                commit_message=message or f"Upload {len(items)} rws patch(es) and model card",
            )  # fmt: skip
    return PushResult(ref.repo_id, branch, info.oid, str(info.commit_url), tuple(names))


def _named_patches(
    patches: Sequence[str | os.PathLike[str] | Patch],
) -> list[tuple[str, Patch, str | None]]:
    """``(name in the repo, patch, file to upload or None to save the object)`` per patch."""
    from rws.patch import Patch

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
    from rws.robustness.report import Report

    return Report.load_json(report)


# --- errors ------------------------------------------------------------------------------------


def _network_errors() -> tuple[type[BaseException], ...]:
    """Transport failures of the HTTP library the client uses (httpx2 in 2.x, httpx in 1.x)."""
    out: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module in ("httpx2", "httpx"):
        with contextlib.suppress(ImportError, AttributeError):
            out.append(__import__(module).TransportError)
    return tuple(out)


def _oneline(err: BaseException) -> str:
    return " ".join(str(err).split())[:160] or type(err).__name__


def _chain(err: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur: BaseException | None = err
    while cur is not None and cur not in out:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


@contextlib.contextmanager
def _translated(ref: HubRef, url: str, *, offline: bool) -> Iterator[None]:
    """Turn the client's exceptions into one-line ``HubError`` subclasses (exit code 6)."""
    from huggingface_hub import errors as hf

    rev = ref.revision or DEFAULT_REVISION
    try:
        yield
    except hf.LocalEntryNotFoundError as e:
        chain = _chain(e)
        if offline or any(isinstance(c, hf.OfflineModeIsEnabled) for c in chain):
            raise HubOfflineError(ref.uri, OFFLINE_MISS) from None
        http = next((c for c in chain if isinstance(c, hf.HfHubHTTPError)), None)
        if http is not None:
            raise _http_error(ref, url, http) from None
        net = next((c for c in chain[1:] if isinstance(c, _network_errors())), e)
        raise HubConnectionError(ref.uri, url, _oneline(net)) from None
    except hf.GatedRepoError:
        raise HubAuthError(
            ref.repo_id, f"gated on {url}: accept its conditions there, then log in with "
            "`hf auth login` or set HF_TOKEN",
        ) from None  # fmt: skip
    except hf.RevisionNotFoundError:
        raise HubRevisionNotFoundError(ref.uri, ref.repo_id, rev) from None
    except (hf.RepositoryNotFoundError, hf.EntryNotFoundError):
        # Mirrors may answer "no repo" for a missing file or revision: ask the repo itself.
        raise _missing(ref, url) from None
    except hf.HfHubHTTPError as e:
        raise _http_error(ref, url, e) from None
    except hf.OfflineModeIsEnabled:
        raise HubOfflineError(ref.uri, OFFLINE_MISS) from None
    except ValueError as e:  # the Hub rejected the card's metadata (create_commit validates it)
        if not isinstance(e.__cause__, hf.BadRequestError):
            raise
        raise HubError(f"{ref.uri}: the Hub rejected the model card: {_oneline(e)}") from None
    except _network_errors() as e:
        raise HubConnectionError(ref.uri, url, _oneline(e)) from None


def _http_error(ref: HubRef, url: str, err: Any) -> HubError:
    status = getattr(getattr(err, "response", None), "status_code", None)
    said = " ".join(str(getattr(err, "server_message", None) or "").split())[:160]
    detail = f"HTTP {status}" + (f": {said}" if said else "")
    if status in (401, 403):
        return HubAuthError(
            ref.repo_id,
            f"{url} refused the request ({detail}); check your token (`hf auth login` or "
            "HF_TOKEN) and its access to the repo",
            status,
        )
    return HubError(f"{ref.uri}: the Hub at {url} answered {detail}")


def _missing(ref: HubRef, url: str) -> HubError:
    """Which of repo, revision and file is missing, asked of the repo (a miss answers no)."""
    from huggingface_hub import HfApi
    from huggingface_hub import errors as hf

    api = HfApi(endpoint=url, **_client_info())
    rev = ref.revision or DEFAULT_REVISION

    def visible(revision: str) -> Any:
        try:
            return api.model_info(ref.repo_id, revision=revision)
        except (hf.HfHubHTTPError, *_network_errors()):
            return None

    info = visible(rev)
    if info is not None and ref.filename is not None:
        files = sorted(s.rfilename for s in info.siblings or [])
        return HubFileNotFoundError(ref.uri, ref.repo_id, ref.filename, rev, files)
    if info is None and rev != DEFAULT_REVISION and visible(DEFAULT_REVISION) is not None:
        return HubRevisionNotFoundError(ref.uri, ref.repo_id, rev)
    return HubRepoNotFoundError(ref.uri, ref.repo_id, url)
