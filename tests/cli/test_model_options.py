"""rws eval's model options: --normalize, --model-kw, --img-size and the input-size check."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from rws.cli.app import app
from rws.io.safetensors_write import save_tensors
from rws.models import resolve_model
from tests.models.test_external import _Net

BASE = ["eval", "--corruptions", "none", "--n-examples", "16", "--device", "cpu"]


def test_model_options_reach_the_model_and_a_wrong_size_is_one_line(tmp_path) -> None:
    runner = CliRunner()
    w = tmp_path / "cnn.safetensors"
    save_tensors(w, resolve_model("small-cnn", num_classes=10, width=8).state_dict())
    out = tmp_path / "r.json"
    res = runner.invoke(app, [*BASE, "--arch", "small-cnn", "--weights", str(w), "--normalize",
                              "none", "--model-kw", "width=8", "--out", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["variants"][0]["name"] == "base"
    res = runner.invoke(app, [*BASE, "--arch", "small-cnn", "--weights", str(w),
                              "--normalize", "imagenett"])  # fmt: skip
    assert res.exit_code == 2 and "normalize 'imagenett': expected one of" in res.stderr
    fixed = tmp_path / "fixed.safetensors"
    save_tensors(fixed, _Net(10, image_size=8).state_dict())
    res = runner.invoke(app, [*BASE, "--arch", "tests.models.test_external:_Net",
                              "--weights", str(fixed)])  # fmt: skip
    assert res.exit_code == 2
    line = res.stderr.strip()
    assert "\n" not in line and "does not take 3×32×32 inputs" in line and "--img-size" in line
    res = runner.invoke(app, [*BASE, "--arch", "tests.models.test_external:_Net",
                              "--weights", str(fixed), "--img-size", "8"])  # fmt: skip
    assert res.exit_code == 0, res.output
