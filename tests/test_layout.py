"""The package's shape (issue 11): layers point down, no import cycles, small modules, few
top-level modules. These run in the suite so an upward import fails CI."""

from __future__ import annotations

from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rws"
MAX_LINES = 400
MAX_TOP_LEVEL = 8


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("rws", cache_dir=None)  # lazy imports inside functions included


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    adj = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(adj):
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = len(index)
                stack.append(v)
                on_stack.add(v)
            if i < len(adj[v]):
                work.append((v, i + 1))
                w = adj[v][i]
                if w not in index:
                    work.append((w, 0))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
    return out


def test_no_import_cycles(graph: grimp.ImportGraph) -> None:
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle() -> None:
    """The check above can fail: a two-module cycle in a scratch package is reported."""

    edges = {"p.a": {"p.b"}, "p.b": {"p.a"}, "p.c": {"p.a"}}

    class Fake:
        modules = frozenset(edges)

        def find_modules_directly_imported_by(self, m: str) -> set[str]:
            return edges[m]

    assert _cycles(Fake()) == [["p.a", "p.b"]]  # type: ignore[arg-type]


def test_layers_contract_is_kept(capsys: pytest.CaptureFixture[str]) -> None:
    """``lint-imports`` with the contract in pyproject.toml (DESIGN §2)."""
    from importlinter.cli import lint_imports

    code = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    assert code == 0, capsys.readouterr().out
    assert "0 broken" in capsys.readouterr().out


def test_package_imports_the_facade_nowhere(graph: grimp.ImportGraph) -> None:
    """Inside the package nothing imports ``rws`` itself (the facade sits above every layer)."""
    importers = sorted(graph.find_modules_that_directly_import("rws"))
    assert importers == []


def test_modules_are_small() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_few_top_level_modules() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL, top
