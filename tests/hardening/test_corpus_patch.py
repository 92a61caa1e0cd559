"""The hardening corpus, patch side (issue 17 items 8, 9, 10, 14, 16, 19, and the streamed
dtype-aware base check): one row a case, run by :func:`tests.hardening.conftest.check_case`."""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import rws
from tests.hardening.conftest import Case, Workspace, check_case


def _meta(path: str) -> dict[str, str]:
    with safe_open(path, "pt") as f:
        return dict(f.metadata() or {})


def _big(ws: Workspace) -> None:
    """A patch with ‖δ‖/‖w‖ ≈ 1 (rounding drops low bits of about a quarter of the elements),
    applied to the base: ``{big}``, ``{patched}``; with ``--undo``: ``{undone}`` and its
    correction ``{undo}``."""
    base = load_file(ws.paths["base"])
    g = torch.Generator().manual_seed(2)
    tuned = {k: v + torch.randn(v.shape, generator=g) for k, v in base.items()}
    p = rws.extract(base, tuned, codec="fp32", name="big")
    p.save(ws.add("big", ws.tmp / "big.rws.safetensors"))
    p = rws.load(ws.paths["big"])
    rws.apply_file(ws.paths["base"], [p], ws.add("patched", ws.tmp / "patched.safetensors"))
    res = rws.apply_file(ws.paths["base"], [p], ws.tmp / "undone.safetensors", undo=True)
    ws.add("undone", res.output)
    ws.add("undo", res.undo_path or "")


def _edit_stack(ws: Workspace, edit: object) -> None:
    """``{edited}``: ``{patched}`` with its ``rws.applied`` stack changed by ``edit(entry)``."""
    _big(ws)
    meta = _meta(ws.paths["patched"])
    stack = json.loads(meta["rws.applied"])
    edit(stack[0])  # type: ignore[operator]
    meta["rws.applied"] = json.dumps(stack)
    save_file(load_file(ws.paths["patched"]), ws.add("edited", ws.tmp / "edited.safetensors"), meta)


def _off_by_one(ws: Workspace) -> None:
    """``{edited}``: ``{patched}`` with one tensor off by 1.0 (stack untouched)."""
    _big(ws)
    t = load_file(ws.paths["patched"])
    t["fc1.bias"] = t["fc1.bias"] + 1.0
    save_file(t, ws.add("edited", ws.tmp / "edited.safetensors"), _meta(ws.paths["patched"]))


def _no_fingerprints(ws: Workspace) -> None:
    p = rws.load(ws.paths["patch"])
    bare = p.replace(tensors={n: replace(t, base_sha256=None) for n, t in p.tensors.items()})
    bare.save(ws.add("bare", ws.tmp / "bare.rws.safetensors"))


def _codec(ws: Workspace) -> None:
    path = ws.paths["patch"]
    meta = _meta(path)
    manifest = json.loads(meta["rws"])
    first = next(iter(manifest["tensors"].values()))
    first["codec"] = "int7"
    meta["rws"] = json.dumps(manifest)
    save_file(load_file(path), ws.add("badcodec", ws.tmp / "badcodec.rws.safetensors"), meta)


def _half(ws: Workspace) -> None:
    half = {k: v.half() for k, v in load_file(ws.paths["base"]).items()}
    save_file(half, ws.add("half", ws.tmp / "half.safetensors"))


class _Eval:
    def __reduce__(self) -> tuple:
        return (eval, ("1",))


def _pickles(ws: Workspace) -> None:
    torch.save({"w": _Eval()}, ws.add("evalpt", ws.tmp / "eval.pt"))
    torch.save(nn.Linear(8, 16), ws.add("modulept", ws.tmp / "module.pt"))
    torch.save({"w": _Eval()}, ws.add("legacypt", ws.tmp / "legacy.pt"),
               _use_new_zipfile_serialization=False)  # fmt: skip
    with open(ws.add("rawpkl", ws.tmp / "raw.pkl"), "wb") as fh:
        pickle.dump({"w": _Eval()}, fh, protocol=4)


def _other_undo(ws: Workspace) -> None:
    """``{wrongundo}``: an undo file recorded for another patch scale."""
    _big(ws)
    res = rws.apply_file(ws.paths["base"], [(rws.load(ws.paths["big"]), 0.5)],
                         ws.tmp / "half-applied.safetensors", undo=True)  # fmt: skip
    ws.add("wrongundo", res.undo_path or "")


def _junk_undo(ws: Workspace) -> None:
    _big(ws)
    save_file({"x": torch.zeros(2)}, ws.add("junkundo", ws.tmp / "junk.undo.safetensors"))


OUT = "{tmp}/out.safetensors"
REMOVE = ["remove", "{patched}", "{big}", "-o", OUT]
CASES = [
    # 8: remove reports only what it verified; --strict refuses the rest
    Case("remove-unverified-strict", [*REMOVE, "--strict"], 4, make=_big, ok_output="unverified"),
    Case("remove-unverified-reported", REMOVE, 0, make=_big, allowed=[OUT],
         ok_output="unverified"),
    Case("remove-edited-2x-strict", ["remove", "{edited}", "{big}", "-o", OUT, "--strict"], 4,
         make=lambda ws: _edit_stack(ws, lambda e: e.update(scale=2.0))),
    Case("remove-off-by-one-strict", ["remove", "{edited}", "{big}", "-o", OUT, "--strict"], 4,
         make=_off_by_one, ok_output="fc1.bias"),
    # 9: exact undo
    Case("apply-undo", ["apply", "{base}", "{patch}", "-o", OUT, "--undo"], 0,
         allowed=[OUT, "{tmp}/out.undo.safetensors"], ok_output="exact undo"),
    Case("apply-sharded-undo", ["apply", "{sharded}", "{patch}", "-o", "{tmp}/out/", "--undo"], 0,
         allowed=["{tmp}/out", "{tmp}/out.undo.safetensors", "{tmp}/out/model.safetensors.index.json",
                  *(f"{{tmp}}/out/model-0000{i}-of-00002.safetensors" for i in (1, 2))],
         ok_output="out.undo.safetensors"),
    Case("remove-with-found-undo-strict",
         ["remove", "{undone}", "{big}", "-o", OUT, "--strict"], 0, make=_big, allowed=[OUT],
         ok_output="4 verified bit-exact"),
    Case("remove-with-given-undo-strict",
         ["remove", "{patched}", "{big}", "-o", OUT, "--undo", "{undo}", "--strict"], 0,
         make=_big, allowed=[OUT], ok_output="exact undo"),
    Case("remove-with-undo-of-other-scale",
         ["remove", "{patched}", "{big}", "-o", OUT, "--undo", "{wrongundo}"], 4,
         make=_other_undo, ok_output="undo correction records"),
    Case("remove-onto-its-undo-file", ["remove", "{undone}", "{big}", "-o", "{undo}"], 2,
         make=_big, ok_output="is also an input"),
    Case("remove-with-junk-undo", ["remove", "{patched}", "{big}", "-o", OUT, "--undo",
         "{junkundo}"], 3, make=_junk_undo, ok_output="not an rws undo file"),
    Case("remove-with-missing-undo", ["remove", "{patched}", "{big}", "-o", OUT, "--undo",
         "{tmp}/none.undo.safetensors"], 1, make=_big, ok_output="no such undo file"),
    # 10: no base fingerprints: refused unless --force
    Case("apply-no-fingerprints", ["apply", "{base}", "{bare}", "-o", OUT], 4,
         make=_no_fingerprints, ok_output="records no base fingerprint"),
    Case("apply-no-fingerprints-forced", ["apply", "{base}", "{bare}", "-o", OUT, "--force"], 0,
         make=_no_fingerprints, allowed=[OUT], ok_output="4 unchecked"),
    # 14: pickles refused for any import, named, exit 5
    Case("pickle-builtins-eval", ["apply", "{evalpt}", "{patch}", "-o", OUT], 5,
         make=_pickles, ok_output="builtins.eval"),
    Case("pickle-nn-module", ["apply", "{modulept}", "{patch}", "-o", OUT], 5,
         make=_pickles, ok_output="torch.nn.modules.linear.Linear"),
    Case("pickle-legacy-format", ["apply", "{legacypt}", "{patch}", "-o", OUT], 5,
         make=_pickles, ok_output="eval"),
    Case("pickle-raw-protocol-4", ["apply", "{rawpkl}", "{patch}", "-o", OUT], 5,
         make=_pickles, ok_output="builtins.eval"),
    Case("pickle-inspect", ["inspect", "{evalpt}"], 5, make=_pickles, ok_output="builtins.eval"),
    # 16: an edited applied stack: exit 3 naming the file, before anything is written
    Case("remove-stack-scale-string", ["remove", "{edited}", "{big}", "-o", OUT], 3,
         make=lambda ws: _edit_stack(ws, lambda e: e.update(scale="2")),
         ok_output="edited.safetensors"),
    Case("remove-stack-missing-sha", ["remove", "{edited}", "{big}", "-o", OUT], 3,
         make=lambda ws: _edit_stack(ws, lambda e: e.pop("sha256"))),
    Case("apply-stack-scale-string", ["apply", "{edited}", "{patch}", "-o", OUT], 3,
         make=lambda ws: _edit_stack(ws, lambda e: e.update(scale="2")),
         ok_output="'scale' '2' is not a number"),
    Case("apply-stack-missing-name", ["apply", "{edited}", "{patch}", "-o", OUT], 3,
         make=lambda ws: _edit_stack(ws, lambda e: e.pop("name"))),
    # 19: NaN/inf α or scale are usage errors; eps beyond [0, 1]; an unknown codec in a file
    Case("scale-nan", ["scale", "{patch}", "nan", "-o", "{tmp}/s.rws.safetensors"], 2),
    Case("scale-inf", ["scale", "{patch}", "inf", "-o", "{tmp}/s.rws.safetensors"], 2),
    Case("apply-alpha-nan", ["apply", "{base}", "{patch}:nan", "-o", OUT], 2),
    Case("apply-alpha-inf", ["apply", "{base}", "{patch}:-inf", "-o", OUT], 2),
    Case("eval-eps-2", ["eval", "--arch", "small-cnn", "--weights", "{base}", "--eps", "2"], 2,
         ok_output="(0, 1]"),
    Case("patch-unknown-codec", ["apply", "{base}", "{badcodec}", "-o", OUT], 3, make=_codec,
         ok_output="badcodec.rws.safetensors"),
    Case("inspect-unknown-codec", ["inspect", "{badcodec}"], 3, make=_codec),
    # 14 (leftover): a streamed base in another dtype names both dtypes
    Case("apply-fp16-base", ["apply", "{half}", "{patch}", "-o", OUT], 4, make=_half,
         ok_output="base is float16, the patch was taken on float32"),
]  # fmt: skip

NEVER = ("weights_only=False", "within one float32 rounding")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_corpus(case: Case, ws: Workspace) -> None:
    res = check_case(case, ws)
    assert not any(s in res.output for s in NEVER), res.output


def test_exact_undo_restores_every_bit(ws: Workspace) -> None:
    _big(ws)
    res = check_case(
        next(replace(c, make=None) for c in CASES if c.name == "remove-with-found-undo-strict"), ws
    )
    assert "unverified" not in res.output
    back, base = load_file(os.path.join(ws.tmp, "out.safetensors")), load_file(ws.paths["base"])
    assert all(torch.equal(back[k].view(torch.int32), v.view(torch.int32)) for k, v in base.items())
