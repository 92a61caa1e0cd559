"""``rws finetune`` (rws.cli.train): weights with provenance, resume, one-line errors, parsers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from rws.cli.app import _Group
from rws.cli.options import parse_corruptions as parse_train_corruptions
from rws.cli.train import finetune_command
from rws.data.severity import parse_severity
from rws.errors import UsageError
from rws.io.hashing import file_sha256
from rws.io.safetensors_read import TensorFile
from rws.io.safetensors_write import save_tensors
from rws.models import load_model
from rws.robustness.corruptions import CORRUPTIONS
from rws.training.state import STATE_FILE
from tests.training.conftest import same_weights


def _app() -> typer.Typer:
    app = typer.Typer(cls=_Group, pretty_exceptions_enable=False)
    app.callback()(lambda: None)
    app.command("finetune")(finetune_command)
    return app


def _run(args: list[str]):
    return CliRunner().invoke(_app(), ["finetune", *args])


@pytest.fixture(scope="module")
def clean_file(clean, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "clean.safetensors"
    save_tensors(path, clean.model.state_dict())
    return path


def test_cli_finetune_writes_weights_with_metadata(clean_file, tmp_path) -> None:
    out = tmp_path / "noise.safetensors"
    args = ["--arch", "small-cnn", "--weights", str(clean_file), "--corruption", "gaussian_noise",
            "--severity", "4-5", "--epochs", "1", "--lr", "1e-3", "--optimizer", "adam",
            "--batch-size", "64", "--device", "cpu", "-o", str(out),
            "--checkpoint-dir", str(tmp_path / "ck")]  # fmt: skip
    res = _run(args)
    assert res.exit_code == 0, res.output
    meta = json.loads(TensorFile(out).metadata["rws.finetune"])
    assert meta["arch"] == "small-cnn" and meta["data"] == "digits"
    assert meta["corruptions"] == ["gaussian_noise"] and meta["severity"] == [4, 5]
    assert meta["epochs"] == 1 and meta["seed"] == 0 and meta["config"]["optimizer"] == "adam"
    assert meta["source"] == {"path": str(clean_file), "sha256": file_sha256(clean_file)}
    assert len(meta["history"]) == 1 and meta["best_epoch"] == 1
    model = load_model("small-cnn", out, 10)  # loads strictly
    assert not same_weights(model, load_model("small-cnn", clean_file, 10))
    assert "val acc (corrupted)" in res.stdout and f"wrote {out}" in res.stdout
    assert (tmp_path / "ck" / STATE_FILE).is_file()
    # the same command again resumes the finished run and writes the same bytes
    again = tmp_path / "again.safetensors"
    res = _run([*args[:-3], str(again), *args[-2:]])
    assert res.exit_code == 0, res.output
    assert "resumed after epoch 1 from" in res.stderr
    assert file_sha256(again) == file_sha256(out)


def test_cli_finetune_from_the_seeded_init(tmp_path) -> None:
    outs = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    for out in outs:
        res = _run(["--arch", "small-cnn", "--corruption", "none", "--epochs", "1",
                    "--device", "cpu", "--seed", "3", "-o", str(out)])  # fmt: skip
        assert res.exit_code == 0, res.output
    assert file_sha256(outs[0]) == file_sha256(outs[1])  # seeded init: identical files
    meta = json.loads(TensorFile(outs[0]).metadata["rws.finetune"])
    assert meta["source"] is None and meta["init_seed"] == 3
    assert meta["corruptions"] == [] and "(clean); final val accuracy 0." in res.stdout


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--corruption", "fgo"], 2, "error: unknown corruption 'fgo'; choose one of: "),
        (["--severity", "7"], 2, "error: --severity '7': give a severity 1–5 or a range"),
        (["--epochs", "0"], 2, "error: epochs must be an integer ≥ 1, got 0"),
        (["--weights", "missing.safetensors"], 1, "error: missing.safetensors: no such file"),
        (["--optimizer", "lbfgs"], 2, "error: unknown optimizer 'lbfgs'"),
    ],
)
def test_cli_bad_inputs_one_line(tmp_path, extra, code, message) -> None:
    out = tmp_path / "bad.safetensors"
    args = ["--arch", "small-cnn", "--corruption", "fog", "--epochs", "1", "--device", "cpu",
            "-o", str(out)]  # fmt: skip
    res = _run([*args, *extra])
    assert res.exit_code == code, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), res.stderr
    assert not out.exists()


def test_option_parsers() -> None:
    assert parse_severity("5") == (5, 5) and parse_severity("3-5") == (3, 5)
    for bad in ("0", "6", "4-2", "a", "1-"):
        with pytest.raises(UsageError, match="--severity"):
            parse_severity(bad)
    assert parse_train_corruptions("none") == ()
    assert parse_train_corruptions("all") == CORRUPTIONS
    assert parse_train_corruptions("fog, snow") == ("fog", "snow")
