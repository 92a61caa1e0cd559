"""Every error a user can cause, under one root.

``str(err)`` is the single line the CLI prints (``error: <message>``); ``exit_code`` is the process
exit status the CLI uses (DESIGN.md §6). Facts are kept as attributes so callers never parse messages.

Exit codes: 1 other · 2 usage · 3 malformed input · 4 integrity refused · 5 refused for safety ·
6 Hub or network · 7 evaluation refused or unreliable.
"""

from __future__ import annotations

import difflib
import os


class RwsError(Exception):
    """Root of all rws errors."""

    exit_code: int = 1


# --- usage (2) ---------------------------------------------------------------------------------


class UsageError(RwsError, ValueError):
    """A bad option or argument value (range, syntax, combination)."""

    exit_code = 2


class UnknownNameError(UsageError):
    """A name looked up in a registry (codec, method, model, corruption, attack) does not exist."""

    def __init__(self, kind: str, name: str, choices: list[str]) -> None:
        self.kind, self.name, self.choices = kind, name, sorted(choices)
        lowered = {c.lower(): c for c in self.choices}
        close = difflib.get_close_matches(str(name).lower(), list(lowered), n=1, cutoff=0.6)
        #: the closest choice (difflib ratio ≥ 0.6, case ignored), or None
        self.suggestion: str | None = lowered[close[0]] if close else None
        hint = f"; did you mean {self.suggestion!r}?" if self.suggestion else ""
        super().__init__(f"unknown {kind} {name!r}; choose one of: {', '.join(self.choices)}{hint}")


class BatchMismatchError(UsageError):
    """A batch whose shape or dtype differs from what a router was fitted on."""

    def __init__(self, expected: str, found: str) -> None:
        self.expected, self.found = expected, found
        super().__init__(f"batch: expected {expected} images, got {found}")


class OutputPathError(UsageError):
    """The output path would overwrite an input, or cannot be written."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = os.fspath(path)
        super().__init__(f"{self.path}: {reason}")


class InputKindError(UsageError):
    """An input path that is not a regular file (a FIFO, device or socket: reading it would block
    or never end)."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = os.fspath(path)
        super().__init__(f"{self.path}: {reason}")


# --- files (1) and malformed input (3) ---------------------------------------------------------


class OutputFileError(RwsError, OSError):
    """The operating system refused to write an output (read-only, disk full, file too large, no
    inodes, permission); nothing was written."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = os.fspath(path)
        super().__init__(f"{self.path}: {reason}")

    def __str__(self) -> str:  # OSError would otherwise format (errno, strerror)
        return self.args[0]


class InputFileError(RwsError, OSError):
    """A file or folder that does not exist or cannot be read."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = os.fspath(path)
        super().__init__(f"{self.path}: {reason}")

    def __str__(self) -> str:  # OSError would otherwise format (errno, strerror)
        return self.args[0]


class MalformedInputError(RwsError):
    """An input whose bytes are not what its format promises."""

    exit_code = 3

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class CheckpointError(MalformedInputError):
    """A checkpoint that cannot be read as a flat mapping of named tensors."""


class PatchFormatError(MalformedInputError):
    """A patch file whose layout or metadata breaks the rws patch format."""


class FormatVersionError(PatchFormatError):
    """A patch written by an incompatible (newer major) format version."""


class CodecError(RwsError):
    """A tensor a codec cannot encode, or encoded data it cannot decode."""

    exit_code = 3

    def __init__(self, tensor: str, reason: str) -> None:
        self.tensor = tensor
        super().__init__(f"tensor {tensor!r}: {reason}")


# --- integrity (4) -----------------------------------------------------------------------------


class IntegrityError(RwsError):
    """An operation refused because its inputs do not belong together."""

    exit_code = 4


class MissingTensorError(IntegrityError, KeyError):
    """A patch names a tensor the target does not have."""

    def __init__(self, tensor: str, where: str, hint: str = "") -> None:
        self.tensor, self.where = tensor, where
        msg = f"tensor {tensor!r} is missing from {where}"
        super().__init__(msg + (f"; {hint}" if hint else ""))

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0]


class ShapeMismatchError(IntegrityError):
    """A delta whose shape differs from the tensor it patches."""

    def __init__(self, tensor: str, expected: tuple[int, ...], found: tuple[int, ...]) -> None:
        self.tensor, self.expected, self.found = tensor, tuple(expected), tuple(found)
        super().__init__(
            f"tensor {tensor!r}: patch expects shape {list(self.expected)}, "
            f"target has {list(self.found)}; the patch was made for another architecture"
        )


class BaseMismatchError(IntegrityError):
    """The target tensor is not the one the patch was extracted against."""

    def __init__(self, where: str, tensor: str, expected: str, found: str) -> None:
        self.where, self.tensor, self.expected, self.found = where, tensor, expected, found
        super().__init__(
            f"{where}: tensor {tensor!r} differs from the base the patch was extracted against "
            f"(sha256 {found[:12]}… != {expected[:12]}…); pass --force (force=True) to apply anyway"
        )


class WholeBaseMismatchError(IntegrityError):
    """Every patched tensor matches its 64-bit fingerprint, yet the full sha256 of the whole base
    the patch records does not: a fingerprint collision (crafted, or a corrupt manifest)."""

    def __init__(self, where: str, patch: str, expected: str, found: str) -> None:
        self.where, self.patch, self.expected, self.found = where, patch, expected, found
        super().__init__(
            f"{where}: the patched tensors match {patch}'s 64-bit fingerprints but not its whole-"
            f"base sha256 ({found[:12]}… != {expected[:12]}…); pass --force (force=True) to apply "
            "anyway"
        )


class BaseDtypeMismatchError(BaseMismatchError):
    """The target tensor is in another dtype than the base the patch was extracted against (and,
    where it was checked, differs from that base even cast back to the base's dtype)."""

    def __init__(
        self, where: str, tensor: str, expected: str, found: str, *, dtype: str, base_dtype: str
    ) -> None:
        super().__init__(where, tensor, expected, found)
        self.dtype, self.base_dtype = dtype, base_dtype
        cast = {"float16": ".half()", "bfloat16": ".bfloat16()", "float32": ".float()"}
        cast_to = cast.get(dtype, f".to(torch.{dtype})")
        IntegrityError.__init__(
            self,
            f"{where}: tensor {tensor!r}: base is {dtype}, the patch was taken on {base_dtype} "
            f"(sha256 {found[:12]}… != {expected[:12]}…); apply "
            f"the patch to the {base_dtype} model before casting it (rws.apply(model, patch), then "
            f"model{cast_to}), or pass --force (force=True) to apply it to the {dtype} weights anyway",
        )


class NoBaseFingerprintError(IntegrityError):
    """A patch records no base fingerprint for a tensor: it would apply to any base unchecked."""

    def __init__(self, where: str, tensor: str, patches: str) -> None:
        self.where, self.tensor, self.patches = where, tensor, patches
        super().__init__(
            f"{where}: tensor {tensor!r}: {patches} records no base fingerprint (base_sha256), so "
            "nothing shows it was taken on this base; pass --force (force=True) to apply anyway"
        )


class UnverifiedError(IntegrityError):
    """Strict removal: tensors not proven bit-exact against the base fingerprints."""

    def __init__(self, where: str, tensors: list[str]) -> None:
        self.where, self.tensors = where, list(tensors)
        shown = ", ".join(repr(t) for t in tensors[:5]) + (", …" if len(tensors) > 5 else "")
        super().__init__(
            f"{where}: {len(tensors)} tensor(s) not verified bit-exact against the base "
            f"fingerprints ({shown}); nothing written (--strict)"
        )


class UndoMismatchError(IntegrityError):
    """An undo correction recorded for other patches or scales than those being removed."""

    def __init__(self, where: str, recorded: str, removing: str) -> None:
        self.where, self.recorded, self.removing = where, recorded, removing
        super().__init__(
            f"{where}: the undo correction records {recorded or 'no patch'}, "
            f"not {removing or 'no patch'}; remove exactly those, or go without --undo"
        )


class NonFiniteError(IntegrityError):
    """NaN or Inf in a delta or in a patched result."""

    def __init__(self, tensor: str, where: str) -> None:
        self.tensor, self.where = tensor, where
        super().__init__(f"tensor {tensor!r}: {where} contains NaN or Inf values")


class NotAppliedError(IntegrityError):
    """Removing a patch that the checkpoint's applied stack does not contain."""

    def __init__(self, path: str, patch: str, stack: list[str]) -> None:
        self.path, self.patch, self.stack = path, patch, list(stack)
        applied = ", ".join(stack) if stack else "nothing"
        super().__init__(
            f"{path}: patch {patch} is not in its applied stack (applied: {applied}); "
            "pass --force (force=True) to subtract it anyway"
        )


# --- safety (5) --------------------------------------------------------------------------------


class UnsafeInputError(RwsError):
    """Refused for safety: a pickle ``weights_only`` rejects, or a torch too old to load safely."""

    exit_code = 5

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = os.fspath(path)
        super().__init__(f"{self.path}: {reason}")


# --- hub (6) and evaluation (7) ----------------------------------------------------------------


class HubError(RwsError):
    """A Hugging Face Hub or network failure."""

    exit_code = 6


class HubReferenceError(UsageError):
    """A malformed ``hf://`` reference or repo id (a usage error: nothing was asked of the Hub)."""

    def __init__(self, ref: str, reason: str) -> None:
        self.ref, self.reason = ref, reason
        super().__init__(f"{ref!r}: {reason}")


class HubIntegrityError(IntegrityError):
    """A file of the Hugging Face cache whose bytes do not match its blob's name (the sha256 of
    an LFS file, the git blob id of another): damaged or tampered with; never used."""

    def __init__(self, ref: str, path: str, blob: str, expected: str, found: str) -> None:
        self.ref, self.path, self.blob, self.expected, self.found = ref, path, blob, expected, found
        super().__init__(
            f"{path}: the cached copy of {ref} is damaged (its hash is {found[:12]}…, the Hub's "
            f"{expected[:12]}…); delete {blob} and fetch it again"
        )


class HubRepoNotFoundError(HubError):
    """The Hub has no such repo (or hides a private or gated one from this token)."""

    def __init__(self, ref: str, repo_id: str, endpoint: str) -> None:
        self.ref, self.repo_id, self.endpoint = ref, repo_id, endpoint
        super().__init__(
            f"{ref}: no repo {repo_id} on {endpoint} (if it is private or gated, log in with "
            "`hf auth login` or set HF_TOKEN)"
        )


class HubRevisionNotFoundError(HubError):
    """The repo exists but has no such branch, tag or commit."""

    def __init__(self, ref: str, repo_id: str, revision: str) -> None:
        self.ref, self.repo_id, self.revision = ref, repo_id, revision
        super().__init__(f"{ref}: repo {repo_id} has no revision {revision!r}")


class HubFileNotFoundError(HubError):
    """The repo and revision exist but do not hold the file."""

    def __init__(
        self, ref: str, repo_id: str, filename: str, revision: str, available: list[str]
    ) -> None:
        self.ref, self.repo_id, self.filename = ref, repo_id, filename
        self.revision, self.available = revision, list(available)
        shown = ", ".join(self.available[:8]) + (", …" if len(self.available) > 8 else "")
        super().__init__(
            f"{ref}: repo {repo_id} has no file {filename!r} at revision {revision!r}"
            + (f"; it has: {shown}" if shown else "")
        )


class HubAuthError(HubError):
    """No token where one is needed, or the Hub refused the one given (never shown)."""

    def __init__(self, repo_id: str, reason: str, status: int | None = None) -> None:
        self.repo_id, self.reason, self.status = repo_id, reason, status
        super().__init__(f"{repo_id}: {reason}")


class HubOfflineError(HubError):
    """Offline mode (``HF_HUB_OFFLINE``) and the file is not in the local Hugging Face cache."""

    def __init__(self, ref: str, action: str) -> None:
        self.ref, self.action = ref, action
        super().__init__(f"{ref}: {action}")


class HubConnectionError(HubError):
    """The Hub endpoint cannot be reached (connection refused, DNS, timeout, TLS)."""

    def __init__(self, ref: str, endpoint: str, reason: str) -> None:
        self.ref, self.endpoint, self.reason = ref, endpoint, reason
        super().__init__(
            f"{ref}: cannot reach the Hub at {endpoint} ({reason}); check the network or "
            "RWS_HF_ENDPOINT / HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use cached files"
        )


class EvaluationError(RwsError):
    """An evaluation that was refused or judged unreliable."""

    exit_code = 7
