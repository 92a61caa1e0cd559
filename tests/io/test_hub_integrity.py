"""Hub downloads are verified before use (issue 17 item 6): the Hugging Face cache names an LFS
blob by its sha256 and another file by its git blob id; a cached copy whose bytes do not match
its name is refused (exit 4, naming the path), offline here (a cache built by hand, no server;
tests/hub/test_hub.py checks the online path against the loopback Hub)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from safetensors.torch import save_file

from rws.errors import HubIntegrityError
from rws.io.hub_fetch import blob_digest, verify_cached
from rws.io.hub_ref import HubRef
from tests.hardening.conftest import invoke, tiny_state

COMMIT = "c0ffee" + "0" * 34


def _cache(root: Path, repo: str, files: dict[str, bytes], *, lfs: bool) -> Path:
    """A Hugging Face cache holding ``files`` of ``repo`` at ``main``, as huggingface_hub lays
    it out: blobs named by sha256 (LFS) or git blob id, snapshot links, refs/main."""
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "blobs").mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(COMMIT)
    snap = folder / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    for name, data in files.items():
        if lfs:
            blob = hashlib.sha256(data).hexdigest()
        else:
            blob = hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()
        (folder / "blobs" / blob).write_bytes(data)
        os.symlink(f"../../blobs/{blob}", snap / name)
    return snap


@pytest.fixture()
def model_bytes(tmp_path: Path) -> bytes:
    save_file(tiny_state(0), tmp_path / "m.safetensors")
    return (tmp_path / "m.safetensors").read_bytes()


@pytest.mark.parametrize("lfs", [True, False], ids=["lfs-sha256", "git-blob-id"])
def test_a_flipped_byte_in_the_cache_is_refused_offline(
    tmp_path: Path, model_bytes: bytes, lfs: bool
) -> None:
    cache = tmp_path / "hub"
    snap = _cache(cache, "acme/tiny", {"model.safetensors": model_bytes}, lfs=lfs)
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    from huggingface_hub import constants

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(constants, "HF_HUB_CACHE", str(cache))
        mp.setattr(constants, "HF_HUB_OFFLINE", True)
        ref = "hf://acme/tiny/model.safetensors"
        res = invoke("inspect", ref, "--json", env=env)
        assert res.exit_code == 0, res.output
        blob = os.path.realpath(snap / "model.safetensors")
        data = bytearray(model_bytes)
        data[-1] ^= 0x01  # same size, one bit
        Path(blob).write_bytes(bytes(data))
        res = invoke("inspect", ref, env=env)
    assert res.exit_code == 4, res.output
    line = res.stderr.strip()
    assert line.startswith(f"error: {snap / 'model.safetensors'}: the cached copy of {ref}")
    assert f"delete {blob}" in line and len(line.splitlines()) == 1


def test_verify_cached_checks_both_blob_kinds(tmp_path: Path) -> None:
    ref = HubRef("acme/x", "f")
    data = b"hello"
    snap = _cache(tmp_path, "acme/x", {"a": data}, lfs=True)
    verify_cached(snap / "a", ref)
    assert blob_digest(snap / "a", "git") == "b6fc4c620b67d95f953a5c1c1230aaab5db5a1b0"  # git
    plain = tmp_path / "plain.bin"  # not a cache blob: nothing to check against
    plain.write_bytes(b"x")
    verify_cached(plain, ref)
    os.chmod(os.path.realpath(snap / "a"), 0o644)
    Path(os.path.realpath(snap / "a")).write_bytes(b"hellO")
    with pytest.raises(HubIntegrityError, match="is damaged") as info:
        verify_cached(snap / "a", ref)
    assert info.value.exit_code == 4
