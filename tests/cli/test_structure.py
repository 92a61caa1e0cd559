"""The CLI's shape: every command body is short (parse → one library call → render), and no
command module imports the app (no cycle: the app imports them)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from rws.cli.app import COMMANDS

CLI = Path(__file__).resolve().parents[2] / "rws" / "cli"
MAX_BODY = 30


def body_lines(fn: ast.FunctionDef) -> int:
    """Lines of a function's body, without its docstring."""
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return 0 if not body else body[-1].end_lineno - body[0].lineno + 1  # type: ignore[operator]


def _commands() -> list[tuple[str, ast.FunctionDef]]:
    wanted = {(f.__module__, f.__name__) for f in COMMANDS.values()}
    found = []
    for path in sorted(CLI.glob("*.py")):
        module = f"rws.cli.{path.stem}"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and (module, node.name) in wanted:
                found.append((f"{module}.{node.name}", node))
    return found


def test_every_registered_command_is_found() -> None:
    assert len(_commands()) == len(COMMANDS) == len(set(COMMANDS.values()))


@pytest.mark.parametrize(("name", "fn"), _commands(), ids=[n for n, _ in _commands()])
def test_command_bodies_are_at_most_30_lines(name: str, fn: ast.FunctionDef) -> None:
    assert body_lines(fn) <= MAX_BODY, (
        f"{name}: {body_lines(fn)} lines; move the work to the library"
    )


def test_the_check_counts_lines_without_the_docstring() -> None:
    src = 'def f():\n    """Doc.\n\n    More."""\n    a = 1\n    return (\n        a\n    )\n'
    fn = ast.parse(src).body[0]
    assert isinstance(fn, ast.FunctionDef) and body_lines(fn) == 4
    long = "def g():\n" + "    x = 1\n" * 31
    assert body_lines(ast.parse(long).body[0]) == 31  # type: ignore[arg-type]


def test_command_modules_never_import_the_app() -> None:
    for path in CLI.glob("*.py"):
        if path.stem in ("app", "__init__"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.module not in ("rws.cli.app", "rws.cli", "rws"), path.name
                if node.module == "rws.cli":
                    assert "app" not in [a.name for a in node.names], path.name
            elif isinstance(node, ast.Import):
                assert all(a.name not in ("rws", "rws.cli.app") for a in node.names), path.name
