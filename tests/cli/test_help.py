"""Every command's help, the typed choices and flag spellings, and text from files printed as
plain text (never markup, never a terminal escape sequence)."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.logging import RichHandler
from rich.table import Table
from safetensors.torch import save_file
from typer.main import get_command

from rws.cli.app import COMMANDS, app
from rws.cli.console import PIPE_WIDTH, SafeConsole, safe_text
from rws.cli.options import AUTOATTACK_HINT, parse_attacks
from rws.cli.render import EpochRows
from rws.io.atomic import write_atomic
from rws.io.checkpoint import open_checkpoint
from rws.io.hashing import file_sha256
from rws.robustness.attacks import list_attacks
from rws.training.config import EpochStats, TrainConfig
from tests.cli.conftest import run

GROUP: Any = get_command(app)


def _commands(group: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command's name path, subcommands of groups (anything with ``commands``) included."""
    found = []
    for name, cmd in group.commands.items():
        found.append((*path, name))
        if getattr(cmd, "commands", None):
            found += _commands(cmd, (*path, name))
    return found


ALL = _commands(GROUP)


def _opts(name: str) -> dict[str, list[str]]:
    """A command's parameters: name → every spelling."""
    return {p.name: p.opts for p in GROUP.commands[name].params if p.name}


def test_every_registered_command_is_reached() -> None:
    assert {p[0] for p in ALL} == set(COMMANDS) and len(ALL) >= len(COMMANDS) >= 18


@pytest.mark.parametrize("path", ALL, ids=" ".join)
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_of_every_command(path: tuple[str, ...], flag: str) -> None:
    code, out, err = run(*path, flag)
    assert code == 0 and err == "", err
    assert out.startswith(f"Usage: rws {' '.join(path)} ") and "Traceback" not in out


def test_help_text_is_never_read_as_markup() -> None:
    assert app.rich_markup_mode is None
    code, out, _ = run("pull", "--help")
    assert code == 0 and "ORG/NAME[/FILE][@REV]" in out  # rich read "[/FILE]" as a closing tag


def test_help_shows_the_choices() -> None:
    _, out, _ = run("eval", "--help")
    assert "<auto|cpu|cuda|cuda:N>" in out and "<none|" + "|".join(list_attacks()) + ">" in out
    assert "<digits|cifar10:DIR|cifar100:DIR|folder:DIR|cifar10c:DIR>" in out
    _, out, _ = run("finetune", "--help")
    assert "--optimizer <sgd|adam" in out and "--schedule <" in out
    _, out, _ = run("extract", "--help")
    assert "--method <delta|interpolation|rws>" in out and "REFERENCES" not in out
    assert "--bn <average|replace-all|delta|skip>" in out
    _, out, _ = run("compose", "--help")
    assert "Sum patches taken against different bases" in out


def test_both_spellings_of_corruptions_and_severities() -> None:
    for name in COMMANDS:
        for opts in _opts(name).values():
            if "--corruptions" in opts or "--corruption" in opts:
                assert {"--corruptions", "--corruption"} <= set(opts), (name, opts)
            if "--severities" in opts or "--severity" in opts:
                assert {"--severities", "--severity"} <= set(opts), (name, opts)
    assert {"--corruption", "--corruptions"} <= set(_opts("finetune")["corruption"])
    assert {"--severity", "--severities"} <= set(_opts("eval")["severities"])


def test_attack_takes_a_comma_list_and_explains_autoattack() -> None:
    assert parse_attacks("pgd, apgd,pgd") == ("pgd", "apgd") and parse_attacks("none") == ()
    code, out, err = run("eval", "--arch", "small-cnn", "--weights", "w.safetensors",
                         "--attack", "pgd,autoattack")  # fmt: skip
    assert code == 2 and out == ""
    assert err.strip() == (
        "error: unknown attack 'autoattack'; choose one of: "
        + ", ".join(sorted(list_attacks()))
        + "; "
        + AUTOATTACK_HINT
    )
    assert "FAB-T and Square are not run" in AUTOATTACK_HINT and len(list_attacks()) == 7


def test_unknown_names_suggest_the_closest_and_list_sorted() -> None:
    code, _, err = run("eval", "--arch", "small-cnn", "--weights", "w", "--corruption", "fogg")
    assert code == 2 and err.strip().endswith("; did you mean 'fog'?")
    listed = err.split("choose one of: ")[1].split(";")[0].split(", ")
    assert listed == sorted(listed) and "fog" in listed
    code, _, err = run("finetune", "--arch", "small-cnn", "--corruption", "fog", "-o", "x",
                       "--device", "cuda:x")  # fmt: skip
    assert code == 2 and err.startswith("error: unknown device 'cuda:x'; choose one of: auto,")


@pytest.mark.parametrize("attacks", ["attacks", "corruptions"])
def test_list_attacks_and_corruptions(attacks: str) -> None:
    code, out, _ = run("list", attacks)
    assert code == 0 and ("autoattack-lite" in out if attacks == "attacks" else "fog" in out)


# --- text from files ----------------------------------------------------------------------------

HOSTILE = ["a[/]b", "[link=https://evil.example]x[/link]", "c\x1b[31mred\x1b]8;;http://e\x07"]


def _hostile_files(folder: Path) -> tuple[Path, Path]:
    g = torch.Generator().manual_seed(0)
    base = {n: torch.randn(4, 3, generator=g) for n in HOSTILE}
    tuned = {n: t + 0.1 * torch.randn(4, 3, generator=g) for n, t in base.items()}
    save_file(base, folder / "base.safetensors")
    save_file(tuned, folder / "tuned.safetensors")
    return folder / "base.safetensors", folder / "tuned.safetensors"


def _plain(text: str) -> None:
    assert "\x1b" not in text and "\x07" not in text
    assert "[link=https://evil.example]x[/link]" in text  # shown as typed, not rendered


def test_tensor_and_patch_names_are_printed_as_plain_text(tmp_path: Path) -> None:
    base, tuned = _hostile_files(tmp_path)
    patch, out_ck = tmp_path / "p.rws.safetensors", tmp_path / "out.safetensors"
    code, _, err = run("extract", base, tuned, "-o", patch, "--name", "[/]n\x1b[2J")
    assert code == 0, err
    code, out, err = run("inspect", patch)
    assert code == 0, err
    _plain(out)
    assert "a[/]b" in out and "c\\x1b[31mred\\x1b]8;;http://e\\x07" in out
    assert "name='[/]n\\x1b[2J'" in out
    code, out, err = run("apply", base, patch, "-o", out_ck)
    assert code == 0 and out_ck.is_file(), err
    assert "applied stack: [/]n\\x1b[2J:" in out and "\x1b" not in out
    code, out, err = run("inspect", out_ck)
    assert code == 0, err
    _plain(out)


def test_the_console_escapes_what_it_did_not_style() -> None:
    assert safe_text("x\x1b[2J\u202ey\r\n\tz") == "x\\x1b[2J\\u202ey\\x0d\n\tz"
    buf = io.StringIO()
    console = SafeConsole(file=buf, force_terminal=True, color_system="standard")
    console.print("[bold]a[/] :smile: \x1b[31m")
    console.print("b", style="bold")  # rich's own style codes pass
    lines = buf.getvalue().splitlines()
    assert lines[0] == "[bold]a[/] :smile: \\x1b[31m" and lines[1] == "\x1b[1mb\x1b[0m"
    buf2 = io.StringIO()
    rich_handler = RichHandler(console=SafeConsole(file=buf2, width=80), show_path=False)
    rich_handler.handle(logging.makeLogRecord({"msg": "name %s", "args": ("e\x1b[31m",)}))
    assert "e\\x1b[31m" in buf2.getvalue() and "\x1b" not in buf2.getvalue()


def test_a_pipe_never_cuts_a_name_column(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)  # a width the user sets is kept
    buf = io.StringIO()
    console = SafeConsole(file=buf)
    assert not console.is_terminal and console.width == PIPE_WIDTH
    t = Table("variant", *(f"gaussian_noise_{i}" for i in range(16)))
    t.add_row("impulse_noise.rws@auto", *("99.0" for _ in range(16)))
    console.print(t)
    text = buf.getvalue()
    assert "…" not in text and "gaussian_noise_15" in text and "impulse_noise.rws@auto" in text
    assert len(text.splitlines()) == 5  # top rule, header, rule, row, bottom rule


def test_epoch_rows_are_printed_as_each_epoch_ends() -> None:
    buf = io.StringIO()
    rows = EpochRows(SafeConsole(file=buf), TrainConfig(epochs=2, corruptions=("fog",)))
    rows(EpochStats(1, 0.01, 2.3415, 0.1058, 0.25, 0.5, 12.34))
    first = buf.getvalue().splitlines()
    rows(EpochStats(2, 0.001, 1.5, 0.5, 0.75, 0.875, 3.0))
    lines = buf.getvalue().splitlines()
    assert lines[:2] == first and len(lines) == 3  # header once, then one row per call
    assert lines[0].split() == ["epoch", "lr", "train", "loss", "train", "acc", "val", "acc",
                                "(clean)", "val", "acc", "(corrupted)", "time", "(s)"]  # fmt: skip
    assert lines[1].split() == ["1", "0.01", "2.3415", "0.1058", "0.5000", "0.2500", "12.3"]
    assert len({len(line) for line in lines}) == 1  # fixed widths: the columns line up


def test_verbose_logs_reader_decisions_and_fingerprints(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    save_file({"w": torch.zeros(2)}, tmp_path / "m.safetensors")
    with caplog.at_level(logging.INFO, logger="rws.io"):
        open_checkpoint(tmp_path / "m.safetensors")
        digest = file_sha256(tmp_path / "m.safetensors")
        write_atomic(tmp_path / "out.json", "{}\n")
    messages = [r.getMessage() for r in caplog.records]
    assert f"{tmp_path / 'm.safetensors'}: read as safetensors (read lazily), 1 tensors" in messages
    assert f"{tmp_path / 'm.safetensors'}: sha256 {digest}" in messages
    assert any(m.startswith(f"{tmp_path / 'out.json'}: written (3 bytes") for m in messages)
