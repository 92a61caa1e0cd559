from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import rws
from rws.cli.app import app, parse_patch_arg
from tests.conftest import Trained

runner = CliRunner()


def run(*args: str | Path) -> tuple[int, str, str]:
    res = runner.invoke(app, [str(a) for a in args])
    return res.exit_code, res.stdout, res.stderr


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.fixture()
def ws(trained: Trained, tmp_path: Path) -> Path:
    save_file(trained.clean.state_dict(), tmp_path / "clean.safetensors")
    save_file(trained.tuned.state_dict(), tmp_path / "tuned.safetensors")
    return tmp_path


def test_version_and_help() -> None:
    code, out, _ = run("--version")
    assert code == 0 and out.strip() == f"rws {rws.__version__}"
    for cmd in ["extract", "apply", "remove", "compose", "scale", "inspect", "diff", "list"]:
        code, out, _ = run(cmd, "--help")
        assert code == 0 and "Usage" in out, cmd


def test_parse_patch_arg() -> None:
    assert parse_patch_arg("fog.safetensors:0.8") == ("fog.safetensors", 0.8)
    assert parse_patch_arg("fog.safetensors") == ("fog.safetensors", None)
    assert parse_patch_arg("hf://org/repo/fog.safetensors") == (
        "hf://org/repo/fog.safetensors",
        None,
    )
    assert parse_patch_arg("p.safetensors:-1e-1") == ("p.safetensors", -0.1)


def test_tour_extract_inspect_apply_remove_compose_scale_diff(ws: Path) -> None:
    code, out, _ = run(
        "extract", ws / "clean.safetensors", ws / "tuned.safetensors", "-o", ws / "p.safetensors",
        "--codec", "int8", "--shallow", "2", "--name", "noise",
        "--tag", "corruption=gaussian_noise", "--description", "demo",
    )  # fmt: skip
    assert code == 0 and "smaller than the full fp32 model" in out
    desc = json.loads(run("inspect", ws / "p.safetensors", "--json")[1])
    assert desc["type"] == "patch" and desc["tags"] == {"corruption": "gaussian_noise"}
    names = [t["name"] for t in desc["tensors"]]
    assert names[0] == "conv1.weight" and set(names[1:5]) == {
        f"bn1.{k}" for k in ("weight", "bias", "running_mean", "running_var")
    }
    assert {t["codec"] for t in desc["tensors"]} == {"int8"} and desc["ratio_vs_model_fp32"] > 1
    assert desc["provenance"]["selection"]["layers"] == ["conv1", "conv2"]
    code, out, _ = run("inspect", ws / "p.safetensors")
    assert code == 0 and "conv1.weight" in out and "zero deltas skipped" in out

    code, out, _ = run(
        "apply", ws / "clean.safetensors", f"{ws / 'p.safetensors'}:0.5", "-o", ws / "a.safetensors"
    )
    assert code == 0 and "applied stack: noise:0.5" in out
    code, out, _ = run("inspect", ws / "a.safetensors")
    assert code == 0 and "noise  scale=0.5" in out
    code, out, _ = run(
        "remove", ws / "a.safetensors", ws / "p.safetensors", "-o", ws / "b.safetensors"
    )
    assert code == 0 and "bit-exact against the base fingerprints" in out
    assert json.loads(run("inspect", ws / "b.safetensors", "--json")[1])["applied"] == []

    code, out, _ = run("scale", ws / "p.safetensors", "0.25", "-o", ws / "q.safetensors")
    assert code == 0 and rws.load(ws / "q.safetensors").scale == 0.25
    code, out, _ = run(
        "compose",
        f"{ws / 'p.safetensors'}:0.5",
        ws / "q.safetensors",
        "-o",
        ws / "c.safetensors",
        "--codec",
        "fp16",
    )
    assert code == 0
    c, p = rws.load(ws / "c.safetensors"), rws.load(ws / "p.safetensors")
    torch.testing.assert_close(
        c.delta("conv1.weight"), 0.75 * p.delta("conv1.weight"), rtol=0, atol=2e-4
    )

    code, out, _ = run(
        "diff", ws / "clean.safetensors", ws / "tuned.safetensors", "--plot", ws / "d.png", "--json"
    )
    rows = json.loads(out)
    assert code == 0 and [r["layer"] for r in rows] == ["conv1", "conv2", "conv3", "fc"]
    assert (ws / "d.png").read_bytes()[:4] == b"\x89PNG"
    code, out, _ = run("list", "codecs")
    assert code == 0 and "nf4" in out


def test_energy_selection_keeps_shallow_layers(ws: Path) -> None:
    code, _, _ = run(
        "extract",
        ws / "clean.safetensors",
        ws / "tuned.safetensors",
        "-o",
        ws / "e.safetensors",
        "--energy",
        "0.5",
    )
    assert code == 0
    layers = rws.load(ws / "e.safetensors").provenance["selection"]["layers"]
    assert layers and layers == ["conv1", "conv2", "conv3", "fc"][: len(layers)]


def test_exact_fp32_apply_matches_the_tuned_checkpoint(ws: Path, trained: Trained) -> None:
    run("extract", ws / "clean.safetensors", ws / "tuned.safetensors", "-o", ws / "p.safetensors")
    code, _, _ = run(
        "apply", ws / "clean.safetensors", ws / "p.safetensors", "-o", ws / "t.safetensors"
    )
    assert code == 0
    model = trained.clean.__class__()
    model.load_state_dict(load_file(ws / "t.safetensors"))
    with torch.no_grad():
        a = model.eval()(trained.x_test).argmax(1)
        b = trained.tuned.eval()(trained.x_test).argmax(1)
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            [
                "apply",
                "{ws}/clean.safetensors",
                "{ws}/missing.safetensors",
                "-o",
                "{ws}/o.safetensors",
            ],
            1,
            "missing.safetensors: no such file",
        ),
        (
            [
                "apply",
                "{ws}/clean.safetensors",
                "{ws}/p.safetensors",
                "-o",
                "{ws}/clean.safetensors",
            ],
            2,
            "clean.safetensors: is also an input; write to another path",
        ),
        (
            ["apply", "{ws}/tuned.safetensors", "{ws}/p.safetensors", "-o", "{ws}/o.safetensors"],
            4,
            "differs from the base the patch was extracted against",
        ),
        (
            [
                "apply",
                "{ws}/clean.safetensors",
                "{ws}/junk.safetensors",
                "-o",
                "{ws}/o.safetensors",
            ],
            3,
            "junk.safetensors:",
        ),
        (
            ["apply", "{ws}/evil.pt", "{ws}/p.safetensors", "-o", "{ws}/o.safetensors"],
            5,
            "evil.pt: refused",
        ),
        (
            ["apply", "{ws}/clean.safetensors", "{ws}/v9.safetensors", "-o", "{ws}/o.safetensors"],
            3,
            "patch format 9 is newer",
        ),
        (
            ["apply", "{ws}/small.safetensors", "{ws}/p.safetensors", "-o", "{ws}/o.safetensors"],
            4,
            "patch expects shape",
        ),
        (
            [
                "apply",
                "{ws}/clean.safetensors",
                "{ws}/p.safetensors",
                "{ws}/nan.safetensors",
                "-o",
                "{ws}/o.safetensors",
            ],
            4,
            "contains NaN or Inf",
        ),
        (
            ["remove", "{ws}/clean.safetensors", "{ws}/p.safetensors", "-o", "{ws}/o.safetensors"],
            4,
            "is not in its applied stack (applied: nothing)",
        ),
        (
            [
                "extract",
                "{ws}/clean.safetensors",
                "{ws}/tuned.safetensors",
                "-o",
                "{ws}/o.safetensors",
                "--codec",
                "int7",
            ],
            2,
            "unknown codec 'int7'",
        ),
        (
            [
                "extract",
                "{ws}/clean.safetensors",
                "{ws}/tuned.safetensors",
                "-o",
                "{ws}/o.safetensors",
                "--shallow",
                "2",
                "--energy",
                "0.5",
            ],
            2,
            "choose one of --shallow and --energy",
        ),
        (
            [
                "extract",
                "{ws}/clean.safetensors",
                "{ws}/tuned.safetensors",
                "-o",
                "{ws}/o.safetensors",
                "--tag",
                "oops",
            ],
            2,
            "--tag 'oops': expected key=value",
        ),
        (["scale", "{ws}/p.safetensors", "2", "-o", "{ws}/p.safetensors"], 2, "is also an input"),
    ],
)
def test_bad_input_one_line_exit_code_nothing_written(
    ws: Path, trained: Trained, args: list[str], code: int, message: str
) -> None:
    import os

    run(
        "extract",
        ws / "clean.safetensors",
        ws / "tuned.safetensors",
        "-o",
        ws / "p.safetensors",
        "--codec",
        "int8",
    )
    (ws / "junk.safetensors").write_bytes(b"\x00" * 3)

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    torch.save({"x": Evil()}, ws / "evil.pt")
    p = rws.load(ws / "p.safetensors")
    p.extra["format_override"] = True
    from rws.patching.format import write_patch

    stored = {
        k: v
        for n, t in p.tensors.items()
        for k, v in ((n + ("::" + s if s else ""), x) for s, x in t.encoded.tensors.items())
    }
    write_patch(ws / "v9.safetensors", stored, {**p.manifest(), "format": 9})
    small = {
        k: v[..., :1].contiguous() if k == "conv1.weight" else v
        for k, v in trained.clean.state_dict().items()
    }
    save_file(small, ws / "small.safetensors")
    nan = rws.extract(
        {"conv1.weight": torch.zeros(16, 3, 3, 3)},
        {"conv1.weight": torch.full((16, 3, 3, 3), 1e38)},
    )
    nan.tensors["conv1.weight"].base_sha256 = None
    (nan * 1e10).save(ws / "nan.safetensors")
    before = _snapshot(ws)
    exit_code, out, err = run(*[a.format(ws=ws) for a in args])
    assert exit_code == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert "Traceback" not in err and out == ""
    assert _snapshot(ws) == before  # nothing written, inputs unmodified


def test_debug_shows_traceback(ws: Path) -> None:
    res = runner.invoke(
        app,
        [
            "--debug",
            "apply",
            str(ws / "clean.safetensors"),
            str(ws / "nope.safetensors"),
            "-o",
            str(ws / "o.safetensors"),
        ],
    )
    assert res.exit_code != 0 and isinstance(res.exception, rws.RwsError)


def test_missing_tensor_and_forced_fingerprint_mismatch(ws: Path, trained: Trained) -> None:
    run("extract", ws / "clean.safetensors", ws / "tuned.safetensors", "-o", ws / "p.safetensors")
    partial = {k: v for k, v in trained.clean.state_dict().items() if k != "conv2.weight"}
    save_file(partial, ws / "partial.safetensors")
    before = _snapshot(ws)
    code, out, err = run(
        "apply", ws / "partial.safetensors", ws / "p.safetensors", "-o", ws / "o.safetensors"
    )
    assert code == 4 and out == "" and "tensor 'conv2.weight' is missing from" in err.strip()
    assert len(err.strip().splitlines()) == 1 and _snapshot(ws) == before
    code, out, err = run(
        "apply",
        ws / "tuned.safetensors",
        ws / "p.safetensors",
        "-o",
        ws / "o.safetensors",
        "--force",
        "--clamp-var",
    )
    assert code == 0 and "warning: " in err and "differs from the patch's base fingerprint" in err
    assert (ws / "o.safetensors").exists() and "base fingerprints 0/" in out


def test_apply_with_bn_recalibration(ws: Path, trained: Trained) -> None:
    run(
        "extract",
        ws / "clean.safetensors",
        ws / "tuned.safetensors",
        "-o",
        ws / "p.safetensors",
        "--tag",
        "corruption=gaussian_noise",
    )
    code, out, err = run(
        "apply", ws / "clean.safetensors", ws / "p.safetensors", "-o", ws / "r.safetensors",
        "--recalibrate-bn", "digits", "--arch", "small-cnn", "--severity", "3-5",
    )  # fmt: skip
    assert code == 0, err
    assert '"corruptions": ["gaussian_noise"]' in err and "applied stack" in out
    run("apply", ws / "clean.safetensors", ws / "p.safetensors", "-o", ws / "plain.safetensors")
    rec, plain = load_file(ws / "r.safetensors"), load_file(ws / "plain.safetensors")
    assert torch.equal(rec["conv1.weight"], plain["conv1.weight"])  # weights as patched
    assert not torch.equal(
        rec["bn1.running_var"], plain["bn1.running_var"]
    )  # statistics re-estimated
    assert (
        json.loads(run("inspect", ws / "r.safetensors", "--json")[1])["applied"][0]["scale"] == 1.0
    )
    before = _snapshot(ws)
    code, _, err = run(
        "apply", ws / "clean.safetensors", ws / "p.safetensors", "-o", ws / "s.safetensors",
        "--recalibrate-bn", "digits", "--arch", "resnet20",
    )  # fmt: skip
    assert code == 3 and "clean.safetensors + patches: does not fit --arch resnet20" in err
    assert _snapshot(ws) == before
    code, _, err = run(
        "apply",
        ws / "clean.safetensors",
        ws / "p.safetensors",
        "-o",
        ws / "s.safetensors",
        "--recalibrate-bn",
        "digits",
    )
    assert code == 2 and "--recalibrate-bn needs --arch" in err
