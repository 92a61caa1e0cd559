"""``rws extract|apply|remove|compose|scale|inspect|diff``: a tour, exactness, the method options
and the one-line errors that write nothing."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import rws
from rws.cli.options import parse_patch_arg
from tests.cli.conftest import run, snapshot
from tests.conftest import Trained


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
    codec_of = {len(t["shape"]) > 1: set() for t in desc["tensors"]}
    for t in desc["tensors"]:  # kernels in the codec, 1-D tensors kept in fp16/fp32
        codec_of[len(t["shape"]) > 1].add(t["codec"])
    assert codec_of[True] == {"int8"} and codec_of[False] <= {"fp16", "fp32"}
    assert desc["ratio_vs_model_fp32"] > 1
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
    for r in rows:  # weights and running statistics apart; together they make the layer's total
        w, st = r["weights"], r["running_stats"]
        assert w["delta_l2"] ** 2 + st["delta_l2"] ** 2 == pytest.approx(r["delta_l2"] ** 2)
        assert w["relative"] == pytest.approx(w["delta_l2"] / w["base_l2"])
    assert rows[0]["running_stats"]["relative"] > rows[0]["weights"]["relative"] > 0
    assert rows[3]["running_stats"] == {"delta_l2": 0.0, "base_l2": 0.0, "relative": 0.0}
    code, out, _ = run("diff", ws / "clean.safetensors", ws / "tuned.safetensors")
    assert code == 0 and "run. stats ‖δ‖/‖w‖" in out and "weights ‖δ‖/‖w‖" in out
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
    p = p.replace(extra={**p.extra, "format_override": True})
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
    nan = nan.replace(tensors={n: replace(t, base_sha256=None) for n, t in nan.tensors.items()})
    (nan * 1e10).save(ws / "nan.safetensors")
    before = snapshot(ws)
    exit_code, out, err = run(*[a.format(ws=ws) for a in args])
    assert exit_code == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert "Traceback" not in err and out == ""
    assert snapshot(ws) == before  # nothing written, inputs unmodified


def test_missing_tensor_and_forced_fingerprint_mismatch(ws: Path, trained: Trained) -> None:
    run("extract", ws / "clean.safetensors", ws / "tuned.safetensors", "-o", ws / "p.safetensors")
    partial = {k: v for k, v in trained.clean.state_dict().items() if k != "conv2.weight"}
    save_file(partial, ws / "partial.safetensors")
    before = snapshot(ws)
    code, out, err = run(
        "apply", ws / "partial.safetensors", ws / "p.safetensors", "-o", ws / "o.safetensors"
    )
    assert code == 4 and out == "" and "tensor 'conv2.weight' is missing from" in err.strip()
    assert len(err.strip().splitlines()) == 1 and snapshot(ws) == before
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
    before = snapshot(ws)
    code, _, err = run(
        "apply", ws / "clean.safetensors", ws / "p.safetensors", "-o", ws / "s.safetensors",
        "--recalibrate-bn", "digits", "--arch", "resnet20",
    )  # fmt: skip
    assert code == 3 and "clean.safetensors + patches: does not fit --arch resnet20" in err
    assert snapshot(ws) == before
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


def test_extract_method_rift_is_gone_and_says_where_it_went(ws: Path) -> None:
    before = snapshot(ws)
    code, out, err = run(
        "extract", ws / "clean.safetensors", ws / "tuned.safetensors", "-o", ws / "r.safetensors",
        "--method", "rift",
    )  # fmt: skip
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("error: unknown method 'rift'; choose one of: delta, interpolation, rws")
    assert "rws rift --help" in err and snapshot(ws) == before


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--origin", "{ws}/clean.safetensors"],
            "--origin needs --method rws (not --method delta)",
        ),
        (["--bn", "skip"], "--bn needs --method rws (not --method delta)"),
        (["--alpha", "half"], "--alpha 'half': give a number or auto"),
        (["--method", "interpolation"], "--method interpolation needs --alpha A|auto"),
        (["--method", "rws", "--alpha", "auto"], "--alpha auto needs validation data (--data)"),
        (["--layers", "auto"], "--layers go with --alpha auto"),
        (["--method", "interpolation", "--alpha", "x"], "--alpha 'x': give a number or auto"),
        (["--method", "rws", "--bn", "mean"], "unknown bn mode 'mean'; choose one of: average,"),
        (
            ["--method", "interpolation", "--alpha", "0.5", "--data", "digits"],
            "go with --alpha auto",
        ),
        (["--codec", "int7"], "unknown codec 'int7'; choose one of: bf16, bnb8, fp16, fp32"),
        (["--arch", "resnet7"], "unknown model 'resnet7'; choose one of: "),
        (
            ["--alpha", "auto", "--data", "digits", "--criterion", "accuracy"],
            "criterion 'accuracy': unknown metric 'accuracy'",
        ),
    ],
)
def test_method_options_are_routed_by_the_library(ws: Path, extra: list[str], message: str) -> None:
    before = snapshot(ws)
    code, out, err = run(
        "extract", ws / "clean.safetensors", ws / "tuned.safetensors", "-o", ws / "o.safetensors",
        *[e.format(ws=ws) for e in extra],
    )  # fmt: skip
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1, err
    assert lines[0].startswith("error: ") and message in lines[0], err
    assert snapshot(ws) == before


def test_extract_rws_with_several_tuned_and_interpolation_with_alpha(ws: Path) -> None:
    tuned = ws / "tuned.safetensors"
    code, _, err = run("extract", ws / "clean.safetensors", tuned, tuned, "-o", ws / "s.safetensors",
                       "--method", "rws", "--bn", "delta")  # fmt: skip
    assert code == 0 and "note: no --origin" in err
    sig = rws.load(ws / "s.safetensors")
    assert sig.kind == "rws" and sig.provenance["bn"] == "delta"
    assert len(sig.provenance["robust"]) == 2
    code, _, _ = run("extract", ws / "clean.safetensors", tuned, "-o", ws / "i.safetensors",
                     "--method", "interpolation", "--alpha", "0.25")  # fmt: skip
    p = rws.load(ws / "i.safetensors")
    assert code == 0 and p.kind == "interpolation" and p.scale == 0.25
    assert p.provenance["alpha"] == 0.25
    code, _, err = run(
        "extract", ws / "clean.safetensors", tuned, tuned, "-o", ws / "x.safetensors"
    )
    assert code == 2 and "more than one TUNED checkpoint needs --method rws" in err


def test_bn_replace_all_and_alpha_mixed_recalibration(ws: Path, trained: Trained) -> None:
    code, _, err = run(
        "extract", ws / "clean.safetensors", ws / "tuned.safetensors", "-o", ws / "p.safetensors",
        "--method", "rws", "--bn", "replace-all", "--shallow", "1", "--tag", "corruption=fog",
        "--alpha", "1",
    )  # fmt: skip
    assert code == 0, err
    code, out, _ = run("inspect", ws / "p.safetensors")
    assert code == 0 and "12 fixed: replaced at full weight whatever α" in out
    assert "bn3.running_var (fixed)" in out
    code, _, err = run(
        "apply", ws / "clean.safetensors", f"{ws / 'p.safetensors'}:0.5", "-o", ws / "m.safetensors",
        "--recalibrate-bn", "digits", "--arch", "small-cnn", "--bn-mix", "alpha",
    )  # fmt: skip
    assert code == 0 and '"mix": 0.5' in err, err
    code, _, err = run(
        "apply", ws / "clean.safetensors", ws / "p.safetensors", "-o", ws / "x.safetensors",
        "--recalibrate-bn", "digits", "--arch", "small-cnn", "--bn-mix", "half",
    )  # fmt: skip
    assert code == 2 and "half" in err and "replace" in err and not (ws / "x.safetensors").exists()


def test_inspect_says_what_was_unwrapped_to_reach_the_weights(tmp_path: Path) -> None:
    path = tmp_path / "run.pt"
    torch.save({"epoch": 3, "state_dict": {"module.fc.weight": torch.ones(2, 2)}}, path)
    code, out, _ = run("inspect", str(path))
    assert code == 0 and "weights reached by taking off: key 'state_dict', prefix 'module.'" in out
    assert "fc.weight" in out and "module.fc.weight" not in out
    code, out, _ = run("inspect", str(path), "--json")
    assert json.loads(out)["unwrapped"] == ["key 'state_dict'", "prefix 'module.'"]
