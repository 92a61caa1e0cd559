"""``Patch.push_to_hub`` and ``Patch.from_pretrained``, for users with PEFT's habits.

Downloads go through :mod:`rws.io.hub_fetch` (the Hugging Face cache). Pushing needs the model
card, which lives above this layer (:mod:`rws.hub`): that package registers its ``push`` here when
it is imported (``import rws`` does), so nothing in ``rws.patching`` imports ``rws.hub``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from rws.errors import InputFileError, UsageError
from rws.io.hub_fetch import download
from rws.io.hub_ref import is_hub_ref, parse_ref, repo_ref

P = TypeVar("P", bound="HubMixin")
_PUSHER: list[Callable[..., Any]] = []


def register_pusher(push: Callable[..., Any]) -> None:
    """Install the function ``Patch.push_to_hub`` calls (``rws.hub.client.push``)."""
    _PUSHER[:] = [push]


class HubMixin:
    """Hub methods of :class:`rws.patching.patch.Patch`."""

    def push_to_hub(self, repo_id: str, **options: Any) -> Any:
        """Upload this patch with a generated model card: ``rws.push([self], repo_id, **options)``.

        Returns:
            :class:`rws.hub.client.PushResult`.

        Example:
            >>> patch.push_to_hub("org/resnet20-fog", report="eval.json")  # doctest: +SKIP
        """
        if not _PUSHER:
            raise UsageError("Patch.push_to_hub needs rws.hub: `import rws` (or rws.hub) first")
        return _PUSHER[0]([self], repo_id, **options)

    @classmethod
    def from_pretrained(
        cls: type[P],
        ref: str | os.PathLike[str],
        filename: str | None = None,
        *,
        revision: str | None = None,
        endpoint: str | None = None,
    ) -> P:
        """Load a patch from a Hub repo (``ORG/NAME``, with or without ``hf://``) or a local
        folder or file; ``filename`` picks one patch of a repo or folder holding several.

        Raises:
            HubReferenceError: a repo or folder with several patches and no ``filename``.
            HubError, InputFileError, PatchFormatError: see :meth:`Patch.load`.

        Example:
            >>> Patch.from_pretrained("org/resnet20-fog", revision="v1")  # doctest: +SKIP
        """
        local = Path(os.fspath(ref))
        if not is_hub_ref(ref) and (local.exists() or local.is_absolute()):
            path = local / filename if filename else local
            if path.is_dir():
                found = sorted(path.glob("*.safetensors"))
                if len(found) != 1:
                    names = ", ".join(p.name for p in found) or "none"
                    raise InputFileError(path, f"holds {len(found)} .safetensors files "
                                         f"({names}); pass filename=")  # fmt: skip
                path = found[0]
            return cls.load(path)  # type: ignore[attr-defined,no-any-return]
        parsed = parse_ref(ref) if is_hub_ref(ref) else repo_ref(os.fspath(ref))
        if filename is not None:
            parsed = parse_ref(f"hf://{parsed.repo_id}/{filename}")
        if revision is not None:
            parsed = parse_ref(f"{parsed.uri}@{revision}")
        return cls.load(download(parsed, endpoint=endpoint))  # type: ignore[attr-defined,no-any-return]
