"""The hardening regression corpus's shared harness (issue 17).

One case a row: a ``Case`` names the CLI arguments, an input maker, the expected exit code and
which paths may change. :func:`check_case` runs it in-process and asserts the promises every
command makes: the exit code, one ``error:`` line and no traceback on failure, *nothing written*
(no new file, no temp file left behind) and *inputs unchanged* (every byte, mode and kind of every
file that existed before, compared by :func:`snapshot`).

Use from a corpus module (``tests/hardening/test_corpus_*.py``)::

    from tests.hardening.conftest import Case, Workspace, check_case

    CASES = [
        Case("apply-onto-base", ["apply", "{base}", "{patch}", "-o", "{base}"], exit=2),
        Case("nan-scale", ["scale", "{patch}", "nan", "-o", "{tmp}/out.rws.safetensors"], exit=2,
             make=lambda ws: None),
    ]

    @pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
    def test_corpus(case: Case, ws: Workspace) -> None:
        check_case(case, ws)

Placeholders in the arguments are filled from :attr:`Workspace.paths` (``{tmp}``, ``{base}``,
``{tuned}``, ``{patch}``, ``{sharded}``, ``{index}``, ``{shard1}``, ``{shard2}`` and any name a
maker adds with ``ws.add(name, path)``; names are identifiers, no dots: ``ws.write("b.json",
…)`` registers ``{b}``). ``make`` builds extra or hostile inputs in ``ws.tmp``
before the snapshot is taken; ``allowed`` lists paths (placeholders allowed) a *successful*
command may create, change or remove; ``ok_output`` is a substring the combined output must
contain; ``env`` sets environment variables for the run.

The ``ws`` fixture is a fresh temp folder holding a tiny checkpoint pair (a 2-layer MLP's
state dict: ``base.safetensors``, ``tuned.safetensors``), the patch ``patch.rws.safetensors``
extracted from them with the int8 codec, and ``sharded/``: the base as a two-shard Hugging Face
folder (``model-0000{1,2}-of-00002.safetensors`` + ``model.safetensors.index.json``). The pair
and the patch are built once per session and copied, so a case costs only its command.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

# huggingface_hub binds its log handler to the sys.stderr of the moment its logging module is
# first imported: do it now (pytest's stream), not inside a CliRunner run whose stream is then
# closed (a later test's Hub log would fail with "I/O operation on closed file"); with the
# settings tests/conftest.py's ``_isolate`` gives every test (its constants are read at import).
with pytest.MonkeyPatch.context() as _mp:
    _mp.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    _mp.delenv("HF_TOKEN", raising=False)
    import huggingface_hub.utils.logging  # noqa: F401

__all__ = ["Case", "Result", "Workspace", "check_case", "invoke", "snapshot", "tiny_state"]


def tiny_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A 2-layer MLP's state dict (8→16→4, float32), fixed seed."""
    g = torch.Generator().manual_seed(seed)
    return {
        "fc1.weight": torch.randn(16, 8, generator=g),
        "fc1.bias": torch.randn(16, generator=g),
        "fc2.weight": torch.randn(4, 16, generator=g),
        "fc2.bias": torch.randn(4, generator=g),
    }


@dataclass(frozen=True)
class Result:
    """One CLI run: exit code and what it printed (stdout and stderr apart)."""

    exit_code: int
    stdout: str
    stderr: str
    exception: BaseException | None = None

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def invoke(*args: str | os.PathLike, env: Mapping[str, str] | None = None) -> Result:
    """``rws ARGS`` in-process through typer's ``CliRunner`` (stdout and stderr kept apart);
    ``env``: variables set for the run."""
    from typer.testing import CliRunner

    from rws.cli.app import app

    res = CliRunner().invoke(app, [os.fspath(a) for a in args], env=dict(env or {}))
    exc = res.exception if not isinstance(res.exception, SystemExit) else None
    return Result(res.exit_code, res.stdout, res.stderr, exc)


# --- snapshots ---------------------------------------------------------------------------------


def _entry(path: Path) -> tuple:
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        return ("link", os.readlink(path))
    if stat.S_ISREG(st.st_mode):
        return ("file", stat.S_IMODE(st.st_mode), path.read_bytes())
    if stat.S_ISDIR(st.st_mode):
        return ("dir", stat.S_IMODE(st.st_mode))
    return ("other", stat.S_IFMT(st.st_mode))


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under ``root`` (relative path → kind, mode and bytes), links not followed."""
    result: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            result[os.path.relpath(path, root)] = _entry(path)
    return result


def changes(before: dict[str, tuple], after: dict[str, tuple]) -> dict[str, list[str]]:
    """What differs between two snapshots: ``added``, ``removed`` and ``changed`` paths."""
    return {
        "added": sorted(set(after) - set(before)),
        "removed": sorted(set(before) - set(after)),
        "changed": sorted(k for k in set(before) & set(after) if before[k] != after[k]),
    }


# --- the workspace -----------------------------------------------------------------------------


@dataclass
class Workspace:
    """A temp folder of tiny inputs; ``paths`` fills the ``{name}`` placeholders of a case."""

    tmp: Path
    paths: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, path: str | os.PathLike) -> str:
        """Register ``{name}`` → ``path`` (returned as a string)."""
        self.paths[name] = os.fspath(path)
        return self.paths[name]

    def fill(self, arg: str) -> str:
        return arg.format(**self.paths) if "{" in arg else arg

    def write(self, name: str, data: str | bytes) -> Path:
        """A file ``tmp/name`` holding ``data``; registered as ``{stem}`` with dots as ``_``."""
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        self.add(name.split("/")[-1].split(".")[0].replace("-", "_"), path)
        return path


def safetensors_bytes(header: dict | str | bytes, data: bytes = b"") -> bytes:
    """A safetensors file from a header (a dict is JSON-encoded; str/bytes are used verbatim,
    for crafted JSON) and a data section."""
    if isinstance(header, dict):
        header = json.dumps(header)
    raw = header.encode() if isinstance(header, str) else header
    return len(raw).to_bytes(8, "little") + raw + data


@pytest.fixture(scope="session")
def _tiny_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hardening")
    base, tuned = tiny_state(0), tiny_state(0)
    g = torch.Generator().manual_seed(1)
    tuned = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in tuned.items()}
    save_file(base, folder / "base.safetensors")
    save_file(tuned, folder / "tuned.safetensors")
    res = invoke(
        "extract", folder / "base.safetensors", folder / "tuned.safetensors",
        "-o", folder / "patch.rws.safetensors", "--codec", "int8",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    shard = folder / "sharded"
    shard.mkdir()
    names = sorted(base)
    parts = {"model-00001-of-00002.safetensors": names[:2]}
    parts["model-00002-of-00002.safetensors"] = names[2:]
    weight_map = {}
    for fname, keys in parts.items():
        save_file({k: base[k] for k in keys}, shard / fname, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(keys, fname))
    size = sum(v.numel() * 4 for v in base.values())
    index = {"metadata": {"total_size": size}, "weight_map": weight_map}
    (shard / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return folder


@pytest.fixture()
def ws(_tiny_files: Path, tmp_path: Path) -> Workspace:
    """A fresh copy of the tiny inputs in ``tmp_path`` (see the module docstring)."""
    for item in _tiny_files.iterdir():
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp_path / item.name)
    w = Workspace(tmp_path)
    w.add("tmp", tmp_path)
    w.add("base", tmp_path / "base.safetensors")
    w.add("tuned", tmp_path / "tuned.safetensors")
    w.add("patch", tmp_path / "patch.rws.safetensors")
    w.add("sharded", tmp_path / "sharded")
    w.add("index", tmp_path / "sharded" / "model.safetensors.index.json")
    w.add("shard1", tmp_path / "sharded" / "model-00001-of-00002.safetensors")
    w.add("shard2", tmp_path / "sharded" / "model-00002-of-00002.safetensors")
    return w


# --- cases -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One corpus row. ``exit``: the expected exit code (0: success). ``make``: builds inputs in
    ``ws.tmp`` (before the snapshot). ``allowed``: paths a successful run may create or change.
    ``ok_output``: a substring the output must contain (e.g. the path named in the error).
    ``env``: environment variables for the run (placeholders allowed)."""

    name: str
    args: Sequence[str]
    exit: int
    make: Callable[[Workspace], object] | None = None
    allowed: Sequence[str] = ()
    ok_output: str = ""
    env: Mapping[str, str] = field(default_factory=dict)


def check_case(case: Case, ws: Workspace) -> Result:
    """Run ``case`` in ``ws`` and assert its promises; returns the result for extra checks."""
    if case.make is not None:
        case.make(ws)
    args = [ws.fill(a) for a in case.args]
    before = snapshot(ws.tmp)
    res = invoke(*args, env={k: ws.fill(v) for k, v in case.env.items()})
    diff = changes(before, snapshot(ws.tmp))
    assert res.exception is None, f"{case.name}: crashed with {res.exception!r}\n{res.output}"
    assert "Traceback" not in res.output, f"{case.name}: traceback\n{res.output}"
    assert res.exit_code == case.exit, f"{case.name}: exit {res.exit_code}\n{res.output}"
    if case.ok_output:
        assert ws.fill(case.ok_output) in res.output, f"{case.name}: {res.output}"
    allowed = (
        {os.path.relpath(ws.fill(p), ws.tmp) for p in case.allowed} if case.exit == 0 else set()
    )
    touched = set(diff["removed"] + diff["changed"]) - allowed
    assert not touched, f"{case.name}: inputs changed: {sorted(touched)}"
    assert not set(diff["added"]) - allowed, f"{case.name}: wrote {diff['added']}"
    if case.exit != 0:
        errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1, f"{case.name}: want one error line\n{res.stderr}"
    return res
