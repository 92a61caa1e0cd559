"""Fetching ``hf://`` references through the standard Hugging Face cache, with one-line errors.

Every reader of patches and checkpoints passes its argument through :func:`resolve_path`, which
downloads into the standard Hugging Face cache (``hf_hub_download``) and returns the local path;
plain paths pass through untouched. Settings are read at call time: the endpoint is ``endpoint=``
(``--endpoint``), else ``RWS_HF_ENDPOINT``, else ``HF_ENDPOINT``, else https://huggingface.co;
``HF_HUB_OFFLINE=1`` uses the cache only. Tokens: whatever huggingface_hub finds itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from rws._version import __version__
from rws.errors import (
    HubAuthError,
    HubConnectionError,
    HubError,
    HubFileNotFoundError,
    HubIntegrityError,
    HubOfflineError,
    HubReferenceError,
    HubRepoNotFoundError,
    HubRevisionNotFoundError,
    OutputFileError,
    RwsError,
    UsageError,
)
from rws.io.hub_ref import HubRef, check_revision, is_hub_ref, parse_ref

logger = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_REVISION = "main"
OFFLINE_MISS = (
    "not in the Hugging Face cache and HF_HUB_OFFLINE is set; fetch it once online "
    "(rws pull) or unset HF_HUB_OFFLINE"
)


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
        return fetch_file(ref, url)
    folder = fetch_snapshot(ref, url, allow=["*.safetensors", "*.json"])
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


def client_info() -> dict[str, str]:
    """The ``library_name``/``library_version`` keywords every huggingface_hub call gets."""
    return {"library_name": "rws", "library_version": __version__}


def fetch_file(ref: HubRef, url: str) -> Path:
    """Download one file reference from the Hub at ``url`` (or find it in the cache).

    Raises:
        HubError: a one-line subclass, see :func:`translate_errors`.
    """
    from huggingface_hub import hf_hub_download

    offline = is_offline()
    if ref.revision:
        check_revision(ref.revision, ref.uri)
    logger.info("fetching %s from %s%s", ref.uri, url, " (offline: cache only)" if offline else "")
    with translate_errors(ref, url, offline=offline):
        path = hf_hub_download(
            ref.repo_id, ref.filename or "", revision=ref.revision, endpoint=url,
            local_files_only=offline, **client_info(),
        )  # fmt: skip
    verify_cached(path, ref)
    return Path(path)


def fetch_snapshot(ref: HubRef, url: str, *, allow: list[str] | None) -> Path:
    """Download a repo's files matching ``allow`` (all when ``None``); returns the snapshot folder.

    Raises:
        HubError: a one-line subclass, see :func:`translate_errors`.
    """
    from huggingface_hub import snapshot_download

    offline = is_offline()
    if ref.revision:
        check_revision(ref.revision, ref.uri)
    logger.info("fetching %s from %s%s", ref.uri, url, " (offline: cache only)" if offline else "")
    with translate_errors(ref, url, offline=offline):
        path = snapshot_download(
            ref.repo_id, revision=ref.revision, endpoint=url, allow_patterns=allow,
            local_files_only=offline, **client_info(),
        )  # fmt: skip
    for dirpath, _, names in os.walk(path):
        for name in names:
            verify_cached(os.path.join(dirpath, name), ref)
    return Path(path)


# --- integrity of the cache --------------------------------------------------------------------

_SHA256 = re.compile(r"[0-9a-f]{64}\Z")
_SHA1 = re.compile(r"[0-9a-f]{40}\Z")
_verified: dict[tuple[str, int, int, int, int], bool] = {}  # (blob, inode, size, mtime, ctime)


def blob_digest(path: str | os.PathLike[str], algorithm: str) -> str:
    """A file's ``sha256``, or (``"git"``) its git blob id: sha1 of ``blob <size>\\0`` + bytes."""
    h = hashlib.sha256() if algorithm == "sha256" else hashlib.sha1(usedforsecurity=False)
    with open(path, "rb") as fh:
        if algorithm == "git":
            h.update(b"blob %d\0" % os.fstat(fh.fileno()).st_size)
        while block := fh.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def verify_cached(path: str | os.PathLike[str], ref: HubRef) -> None:
    """Check a file of the Hugging Face cache against its blob's name before it is used: the
    cache names LFS blobs by their sha256 and other files by their git blob id. A file that is
    not a cache blob (a local folder copy) is not checked (logged at debug level).

    Raises:
        HubIntegrityError: the bytes do not match the name (exit 4, naming the path).
    """
    blob = os.path.realpath(path)
    name = os.path.basename(blob)
    algorithm = "sha256" if _SHA256.match(name) else "git" if _SHA1.match(name) else None
    if algorithm is None or os.path.basename(os.path.dirname(blob)) != "blobs":
        logger.debug("%s: not a Hugging Face cache blob; not verified", path)
        return
    st = os.stat(blob)
    key = (blob, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key in _verified:
        return
    found = blob_digest(blob, algorithm)
    if found != name:
        raise HubIntegrityError(ref.uri, os.fspath(path), blob, name, found)
    _verified[key] = True


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
def translate_errors(ref: HubRef, url: str, *, offline: bool) -> Iterator[None]:
    """Turn huggingface_hub's exceptions in a block into one-line ``HubError`` subclasses
    (exit code 6) naming ``ref``; ``offline`` says a cache miss is due to offline mode.

    Raises:
        HubOfflineError, HubAuthError, HubRevisionNotFoundError, HubRepoNotFoundError,
        HubFileNotFoundError, HubConnectionError, HubError: what the client's error meant.
    """
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
    except OSError as e:  # the cache folder: read-only HOME, disk full, permissions
        if isinstance(e, RwsError):
            raise
        where = e.filename or "the Hugging Face cache"
        raise OutputFileError(
            where, f"cannot write the Hugging Face cache for {ref.uri} ({e.strerror or e}); "
            "set HF_HOME or HF_HUB_CACHE to a writable folder",
        ) from None  # fmt: skip


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

    api = HfApi(endpoint=url, **client_info())
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
