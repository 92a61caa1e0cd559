"""The shared options: choices from the registries (help, completion, one-line errors) and the
argument parsers."""

from __future__ import annotations

from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from rws.cli.app import _Group
from rws.cli.options import (
    ArchOpt,
    AttackOpt,
    CodecOpt,
    CorruptionsOpt,
    choice,
    parse_corruptions,
    parse_patch_arg,
    parse_tags,
)
from rws.errors import UsageError
from rws.patching.codecs import list_codecs
from rws.robustness.corruptions import CORRUPTIONS, list_corruptions


def _app() -> typer.Typer:
    app = typer.Typer(cls=_Group, pretty_exceptions_enable=False)
    app.callback()(lambda: None)

    @app.command()
    def show(
        codec: CodecOpt = "fp32",
        arch: ArchOpt = "small-cnn",
        corruptions: CorruptionsOpt = "all",
        attack: AttackOpt = "none",
    ) -> None:
        print(codec, arch, corruptions, attack)

    return app


def _run(*args: str):
    return CliRunner().invoke(_app(), ["show", *args])


def test_choices_come_from_the_registries() -> None:
    res = _run("--help")
    assert res.exit_code == 0 and "<" + "|".join(list_codecs()) + ">" in res.stdout
    assert "<none|apgd" in res.stdout and "<all|none|NAME,…>" in res.stdout


def test_valid_values_pass_through_unchanged() -> None:
    res = _run("--codec", "nf4", "--arch", "timm:resnet18", "--corruptions", "fog, snow",
               "--attack", "pgd")  # fmt: skip
    assert res.exit_code == 0 and res.stdout.strip() == "nf4 timm:resnet18 fog, snow pgd"
    res = _run("--arch", "my.module:factory", "--corruptions", "none")
    assert res.exit_code == 0 and "my.module:factory none" in res.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--codec", "int7"], "error: unknown codec 'int7'; choose one of: bf16, bnb8, fp16,"),
        (["--arch", "resnet7"], "error: unknown model 'resnet7'; choose one of: "),
        (["--corruptions", "fog,fogg"], "error: unknown corruption 'fogg'; choose one of: "),
        (["--attack", "cw"], "error: unknown attack 'cw'; choose one of: apgd,"),
    ],
)
def test_an_unknown_choice_is_one_line_exit_2(args: list[str], message: str) -> None:
    res = _run(*args)
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2 and res.stdout == "" and len(lines) == 1, res.stderr
    assert lines[0].startswith(message), res.stderr


def test_keywords_are_accepted_but_not_listed_as_choices() -> None:
    res = _run("--corruptions", "blur")
    assert res.exit_code == 2
    assert res.stderr.strip() == (
        "error: unknown corruption 'blur'; choose one of: "
        + ", ".join(sorted(list_corruptions()))
        + "; did you mean 'zoom_blur'?"
    )


def test_shell_completion_offers_the_registered_names() -> None:
    opt = choice(help="h", kind="corruption", names=list_corruptions(), listed=True)
    complete = opt.autocompletion
    assert complete("fo") == ["fog"]
    assert complete("fog,gaussian_") == ["fog,gaussian_blur", "fog,gaussian_noise"]
    assert choice(help="h", kind="codec", names=list_codecs()).autocompletion("b") == [
        "bf16",
        "bnb8",
    ]


def test_choice_hints_name_where_a_removed_value_went() -> None:
    app = typer.Typer(cls=_Group, pretty_exceptions_enable=False)
    app.callback()(lambda: None)

    @app.command()
    def go(mode: Annotated[str, choice(help="h", kind="mode", names=("a",),
                                       hints={"b": "use c"})] = "a") -> None:  # fmt: skip
        print(mode)

    res = CliRunner().invoke(app, ["go", "--mode", "b"])
    assert res.exit_code == 2 and res.stderr.strip() == (
        "error: unknown mode 'b'; choose one of: a; use c"
    )


def test_parse_patch_arg() -> None:
    assert parse_patch_arg("fog.safetensors:0.8") == ("fog.safetensors", 0.8)
    assert parse_patch_arg("C:/x.safetensors") == ("C:/x.safetensors", None)


def test_parse_tags() -> None:
    assert parse_tags(["corruption=fog", "k=a=b"]) == {"corruption": "fog", "k": "a=b"}
    assert parse_tags(None) == {}
    for bad in ("oops", "=v"):
        with pytest.raises(UsageError, match=f"--tag '{bad}': expected key=value"):
            parse_tags([bad])


def test_parse_corruptions() -> None:
    assert parse_corruptions("none") == ()
    assert parse_corruptions("all") == CORRUPTIONS
    assert parse_corruptions("fog, snow") == ("fog", "snow")
    with pytest.raises(UsageError, match="--corruption ',': give corruption names, all or none"):
        parse_corruptions(" ,", option="--corruption")
