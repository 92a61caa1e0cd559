"""Packaging: the distribution name, dependencies that match the imports, the shipped signature
library as package data, and every file rws writes readable by the safetensors library."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import rws
from rws.analysis.library import SHIPPED, SignatureLibrary
from rws.io.checkpoint import open_checkpoint

tomllib = pytest.importorskip("tomllib")  # Python ≥ 3.11
ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# import name → distribution name, where they differ
DISTRIBUTIONS = {"yaml": "pyyaml", "PIL": "pillow", "sklearn": "scikit-learn",
                 "huggingface_hub": "huggingface-hub", "skimage": "scikit-image",
                 "cv2": "opencv-python-headless"}  # fmt: skip
OPTIONAL = {"timm", "torchvision", "imagecorruptions", "transformers"}  # adapters, checked at use


def _name(requirement: str) -> str:
    return requirement.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0]


def _third_party_imports() -> set[str]:
    found: set[str] = set()
    for path in (ROOT / "rws").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m not in ("rws", "__future__")}


def test_distribution_name_and_dependencies_match_the_imports() -> None:
    project = PROJECT["project"]
    assert project["name"] == "rws-patch" and project["scripts"] == {"rws": "rws.cli:app"}
    declared = {_name(r).strip().lower() for r in project["dependencies"]}
    used = {DISTRIBUTIONS.get(m, m).lower().replace("_", "-") for m in _third_party_imports()}
    assert used - OPTIONAL <= declared, used - declared  # every import is declared …
    assert declared <= used, declared - used  # … and every declaration is imported


def test_the_signature_library_is_package_data() -> None:
    patterns = PROJECT["tool"]["setuptools"]["package-data"]["rws"]
    shipped = sorted(p.name for p in SHIPPED.iterdir())
    assert shipped and all(any(p.match(g.split("/")[-1]) for g in patterns) for p in
                           SHIPPED.iterdir())  # fmt: skip
    assert all(g.startswith("_signatures/") for g in patterns)
    assert (ROOT / "signatures").resolve() == SHIPPED.resolve()  # one copy; the checkout's name
    assert SignatureLibrary.from_folder(SHIPPED).corruptions == ["contrast", "fog", "impulse_noise"]
    assert {"clean.safetensors", "origin.safetensors", "index.json"} <= set(shipped)


def _round_trips(path: Path) -> int:
    """Open ``path`` with the safetensors library; its tensors equal what rws reads."""
    with safe_open(path, framework="pt") as f, open_checkpoint(path) as ck:
        names = sorted(f.keys())
        assert names == sorted(ck.keys()), path.name
        for name in names:
            a, b = f.get_tensor(name), ck.get(name)
            assert a.dtype == b.dtype and torch.equal(a, b), (path.name, name)
        assert f.metadata() is None or isinstance(f.metadata(), dict)
    return len(names)


@pytest.mark.parametrize("codec", ["fp32", "bf16", "int8"])
def test_every_file_rws_writes_opens_with_safetensors(tmp_path: Path, codec: str) -> None:
    origin, clean = SHIPPED / "origin.safetensors", SHIPPED / "clean.safetensors"
    patch = rws.extract(origin, clean, codec=codec, shallow=3)
    patch.save(tmp_path / "p.safetensors")
    sparse = rws.extract(origin, clean, codec=codec, shallow=3, density=0.25, sparsify="topk")
    sparse.save(tmp_path / "sparse.safetensors")
    for name in ("p.safetensors", "sparse.safetensors"):
        assert _round_trips(tmp_path / name) > 0
        back = rws.load(tmp_path / name)
        assert back.fingerprint() == (patch if name == "p.safetensors" else sparse).fingerprint()
    rws.apply_file(origin, [(patch, 0.5)], tmp_path / "patched.safetensors", undo=True)
    rws.remove_file(tmp_path / "patched.safetensors", [(patch, 0.5)], tmp_path / "back.safetensors")
    for name in ("patched.safetensors", "patched.undo.safetensors", "back.safetensors"):
        assert _round_trips(tmp_path / name) > 0, name
    with (
        safe_open(tmp_path / "back.safetensors", framework="pt") as f,
        open_checkpoint(origin) as o,
    ):
        assert all(torch.equal(f.get_tensor(k), o.get(k)) for k in o)  # the undo: exact
