"""Reports (JSON shape and round trip, CSV, PNG, atomic writes, table) and the ``rws eval`` command."""

from __future__ import annotations

import csv
import json
import os

import pytest
import torch
import typer
from rich.console import Console
from typer.testing import CliRunner

from rws.cli.app import _Group
from rws.cli.eval import eval_command
from rws.cli.options import parse_corruptions
from rws.data.severity import parse_severities
from rws.errors import UsageError
from rws.models import create_model
from rws.robustness.corruptions import CORRUPTIONS
from rws.robustness.report import Report
from tests.robustness.conftest import hand_report as _hand_report
from tests.robustness.test_evaluate import trained_models


def masked_cnn(num_classes: int = 10) -> torch.nn.Module:
    """small-cnn behind an input quantiser: zero input gradients (gradient masking)."""
    model = create_model("small-cnn", num_classes=num_classes)
    model.register_forward_pre_hook(lambda _m, args: (torch.round(args[0] * 4) / 4,))
    return model


def test_json_shape_and_round_trip(tmp_path) -> None:
    r = _hand_report()
    d = r.to_dict()
    assert list(d) == ["variants", "settings"]
    assert [v["name"] for v in d["variants"]] == ["base", "fog@0.8"]
    keys = [
        "name",
        "patches",
        "clean",
        "corruptions",
        "mean_corruption",
        "mce",
        "robust",
        "vs_base",
    ]
    assert all(list(v) == keys for v in d["variants"])
    assert d["variants"][0]["corruptions"] == {"fog": {"1": 0.5, "2": 0.25}}
    assert d["variants"][0]["vs_base"] is None
    assert d["variants"][1]["vs_base"]["corruptions"]["fog"]["severities"]["2"]["lost"] == 1
    assert json.loads(json.dumps(d)) == d  # to_dict is already the JSON
    r.save_json(tmp_path / "r.json")
    back = Report.load_json(tmp_path / "r.json")
    assert back.to_dict() == d
    assert back.variant("fog@0.8").corruptions == {"fog": {1: 0.75, 2: 0.25}}
    assert back.variant("fog@0.8").vs_base["corruptions"]["fog"]["severities"][1]["gained"] == 1
    assert back == Report.from_dict(d)  # per-example results are not part of equality
    with pytest.raises(KeyError, match="no variant 'snow'"):
        r.variant("snow")


def test_csv_one_row_per_variant_and_metric(tmp_path) -> None:
    r = _hand_report()
    r.save_csv(tmp_path / "r.csv")
    with open(tmp_path / "r.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    metrics = ["clean", "corruption/fog/1", "corruption/fog/2", "corruption/fog",
               "mean_corruption", "mce", "robust/pgd"]  # fmt: skip
    assert [(x["variant"], x["metric"]) for x in rows] == [
        (v, m) for v in ("base", "fog@0.8") for m in metrics
    ]
    fog = {x["metric"]: x for x in rows if x["variant"] == "fog@0.8"}
    assert float(fog["corruption/fog"]["value"]) == 0.5
    assert float(fog["clean"]["delta"]) == 0.0 and float(fog["clean"]["p_value"]) == 1.0
    assert float(fog["mce"]["delta"]) == -0.2 and fog["mce"]["p_value"] == ""
    assert rows[0]["delta"] == ""  # the base has no comparison
    assert list(rows[0]) == ["variant", "metric", "value", "delta", "test", "p_value", "p_holm",
                             "ci95_lo", "ci95_hi", "kernel", "table"]  # fmt: skip
    pooled = fog["corruption/fog"]
    assert pooled["test"] == "wilcoxon" and float(pooled["p_value"]) == 0.5
    assert float(pooled["p_holm"]) == 1.0  # 6 tested rows: min(1, 6 · 0.5)
    assert (float(pooled["ci95_lo"]), float(pooled["ci95_hi"])) == (-0.25, 0.5)
    assert fog["corruption/fog/1"]["test"] == "mcnemar" and fog["mce"]["test"] == ""


def test_writes_are_atomic(tmp_path, monkeypatch) -> None:
    r = _hand_report()
    paths = [tmp_path / "r.json", tmp_path / "r.csv", tmp_path / "r.png"]
    for p in paths:
        p.write_bytes(b"old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    for save, p in zip((r.save_json, r.save_csv, r.save_plots), paths, strict=True):
        with pytest.raises(OSError, match="disk full"):
            save(p)
        assert p.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["r.csv", "r.json", "r.png"]  # no temp files left
    monkeypatch.undo()
    r.save_plots(paths[2])
    import matplotlib.image

    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(paths[2])
    assert img.shape[0] > 300 and img.shape[1] > 500


def test_table_shows_accuracies_changes_and_p_values() -> None:
    console = Console(record=True, width=200, color_system=None)
    console.print(_hand_report().table())
    text = console.export_text()
    assert "fog@0.8" in text and "75.0%" in text and "37.5%" in text
    assert "+12.5 pt (p=1)" in text  # fog pooled over severities: Holm-adjusted, raw p 0.5
    assert "Holm-adjusted" in text and "+12.5 pt (p=0.5)" not in text
    assert "mCE" in text and "-20.0 pt" in text


# A vs_base entry as reports stored it before the image-level tests and Holm (rws 0.1.0).
OLD_VARIANT = {
    "name": "gauss", "patches": [], "clean": 0.9, "corruptions": {"fog": {"1": 0.5, "2": 0.3}},
    "mean_corruption": 0.4, "mce": None, "robust": {},
    "vs_base": {"clean": {"delta": 0.02, "p_value": 0.012, "gained": 9, "lost": 2},
                "corruptions": {"fog": {"delta": 0.1, "p_value": 4.4e-36, "gained": 60, "lost": 5,
                                        "severities": {"1": {"delta": 0.1, "p_value": 1e-9,
                                                             "gained": 30, "lost": 3}}}},
                "mean_corruption": {"delta": 0.1, "p_value": 4.4e-36, "gained": 60, "lost": 5},
                "mce": None, "robust": {}},
}  # fmt: skip


def test_old_report_without_test_keys_still_loads(tmp_path) -> None:
    base = {**OLD_VARIANT, "name": "base", "vs_base": None}
    (tmp_path / "old.json").write_text(json.dumps({"variants": [base, OLD_VARIANT],
                                                   "settings": {"seed": 0}}))  # fmt: skip
    r = Report.load_json(tmp_path / "old.json")
    assert r.variant("gauss").vs_base["corruptions"]["fog"]["severities"][1]["gained"] == 30
    rows = {x["metric"]: x for x in r.rows() if x["variant"] == "gauss"}
    assert rows["mean_corruption"]["p_value"] == 4.4e-36
    assert rows["mean_corruption"]["p_holm"] is None and rows["clean"]["test"] is None
    assert rows["clean"]["ci95_lo"] is None
    r.save_csv(tmp_path / "old.csv")
    with open(tmp_path / "old.csv", newline="") as fh:
        clean = next(x for x in csv.DictReader(fh) if x["variant"] == "gauss")
    assert clean["p_value"] == "0.012" and clean["p_holm"] == "" and clean["ci95_hi"] == ""
    console = Console(record=True, width=250, color_system=None)
    console.print(r.table())
    assert "+2.0 pt (raw p=0.012)" in console.export_text()  # never shown as Holm-adjusted
    assert Report.from_dict(r.to_dict()).to_dict() == r.to_dict()


def test_option_parsers() -> None:
    assert parse_severities("1-5") == [1, 2, 3, 4, 5]
    assert parse_severities("1,3,5") == [1, 3, 5]
    assert parse_severities("2-3,5,2") == [2, 3, 5]
    for bad in ("0", "1-6", "3-1", "a", ""):
        with pytest.raises(UsageError, match="--severities"):
            parse_severities(bad)
    assert parse_corruptions("all") == CORRUPTIONS and parse_corruptions("none") == ()
    assert parse_corruptions("fog, snow") == ("fog", "snow")


# --- the command --------------------------------------------------------------------------------


def _app() -> typer.Typer:
    app = typer.Typer(cls=_Group, pretty_exceptions_enable=False)
    app.callback()(lambda: None)
    app.command("eval")(eval_command)
    return app


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from safetensors.torch import save_file

    m = trained_models()
    folder = tmp_path_factory.mktemp("eval_cli")
    save_file(m.clean.state_dict(), folder / "clean.safetensors")
    m.patch.save(folder / "gauss.rws.safetensors")
    return folder


def _run(args: list[str]):
    return CliRunner().invoke(_app(), ["eval", *args])


BASE_ARGS = ["--arch", "small-cnn", "--data", "digits", "--n-examples", "64", "--batch-size", "32",
             "--device", "cpu"]  # fmt: skip


def test_eval_writes_report_json_csv_png(files) -> None:
    out, csv_path, png = files / "r.json", files / "r.csv", files / "r.png"
    args = [*BASE_ARGS, "--weights", str(files / "clean.safetensors"),
            "--patch", f"{files / 'gauss.rws.safetensors'}:0.8", "--corruptions",
            "gaussian_noise,contrast", "--severities", "1-2", "--attack", "pgd", "--steps", "2",
            "--out", str(out), "--csv", str(csv_path), "--plot", str(png)]  # fmt: skip
    res = _run(args)
    assert res.exit_code == 0, res.output
    d = json.loads(out.read_text())
    assert [v["name"] for v in d["variants"]] == ["base", "gauss@0.8"]
    assert d["variants"][1]["patches"][0]["alpha"] == 0.8
    assert set(d["variants"][0]["corruptions"]["contrast"]) == {"1", "2"}
    assert d["variants"][0]["robust"]["pgd"] < d["variants"][0]["clean"]
    assert d["settings"]["n_examples"] == 64 and d["settings"]["severities"] == [1, 2]
    assert d["settings"]["eps"] == pytest.approx(8 / 255)
    assert png.read_bytes()[:4] == b"\x89PNG" and csv_path.read_text().startswith("variant,")
    assert "gauss@0.8" in res.stdout and "robust (pgd)" in res.stdout
    assert f"wrote {out}" in res.stdout
    assert d["settings"]["params"] == "auto" and d["settings"]["table"] == "cifar (make_cifar_c.py)"
    assert "corruption table cifar (make_cifar_c.py), seed 0" in res.stdout

    # a second run measures mCE against the first run's unpatched model
    out2 = files / "r2.json"
    res = _run([*BASE_ARGS, "--weights", str(files / "clean.safetensors"), "--corruptions",
                "gaussian_noise,contrast", "--severities", "1,2", "--baseline", str(out),
                "--out", str(out2)])  # fmt: skip
    assert res.exit_code == 0, res.output
    d2 = json.loads(out2.read_text())
    assert d2["variants"][0]["mce"] == pytest.approx(1.0)
    assert d2["settings"]["baseline"]["kind"] == "report"

    # --params picks the severity table; the report and the output name the one that ran
    res = _run([*BASE_ARGS, "--weights", str(files / "clean.safetensors"), "--corruptions",
                "pixelate", "--severities", "1", "--params", "imagecorruptions",
                "--out", str(out2)])  # fmt: skip
    assert res.exit_code == 0, res.output
    label = "imagecorruptions (imagecorruptions 1.1.2)"
    assert json.loads(out2.read_text())["settings"]["table"] == label
    assert f"corruption table {label}" in res.stdout


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--corruptions", "fogg"], "error: unknown corruption 'fogg'; choose one of: "),
        (["--severities", "0"], "error: --severities '0': severities run from 1 to 5"),
        (["--attack", "pgd", "--eps", "8/0"], "error: cannot parse eps '8/0'"),
        (["--params", "coco"], "error: unknown severity table 'coco'; choose one of: cifar, "),
    ],
)
def test_bad_inputs_exit_2_with_one_line(files, extra, message) -> None:
    out = files / "bad.json"
    res = _run([*BASE_ARGS, "--weights", str(files / "clean.safetensors"), *extra,
                "--out", str(out)])  # fmt: skip
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), res.stderr
    assert not out.exists()


def test_strict_refuses_a_masked_model(files) -> None:
    out = files / "masked.json"
    args = ["--arch", "tests.robustness.test_report:masked_cnn", "--weights",
            str(files / "clean.safetensors"), "--data", "digits", "--n-examples", "32",
            "--corruptions", "none", "--attack", "pgd", "--steps", "2", "--device", "cpu",
            "--out", str(out)]  # fmt: skip
    res = _run([*args, "--strict"])
    assert res.exit_code == 7, res.output
    line = res.stderr.strip()
    assert line.startswith("error: variant base: zero input gradients: 32 of 32 examples")
    assert line.endswith("evaluation refused (--strict)") and "\n" not in line
    assert not out.exists()
    res = _run(args)  # without --strict: reported as warnings, exit 0
    assert res.exit_code == 0, res.output
    assert "warning: base: zero input gradients" in res.stderr
    assert json.loads(out.read_text())["settings"]["warnings"]
