"""benchmarks/gpu_suite.py runs end to end (``--tiny``: the same code at the test suite's sizes)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SUITE = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_suite.py"


def test_gpu_suite_tiny_prints_one_table_with_every_part(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("torchattacks")
    spec = importlib.util.spec_from_file_location("gpu_suite", SUITE)
    assert spec is not None and spec.loader is not None
    suite = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_suite", suite)  # dataclasses look their module up
    spec.loader.exec_module(suite)
    assert suite.main(["--tiny", "--json", str(tmp_path / "rows.json")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("rws GPU suite on cpu: small-cnn, 4 images")
    assert out[1].split()[:2] == ["what", "setting"]
    body = [line for line in out[3:] if line.strip()]
    assert [line[0] for line in body] == ["a", "b", "b", "c", "c", "c", "c", "a", "a"]
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    evals = [r for r in rows if r["part"] == "a"]
    assert [r["setting"].split()[0] for r in evals] == ["fp32", "fp32", "bf16"]
    assert all(
        r["seconds"] > 0 and r["rate"] == pytest.approx(4 * 46 / r["seconds"]) for r in evals
    )
    attacks = [r for r in rows if r["part"] == "b"]
    assert [r["what"] for r in attacks] == ["PGD-10 on 4", "APGD-CE-100 on 4"]
    assert all(0.0 <= r["accuracy"] <= 1.0 and "peer_seconds" in r for r in attacks)
    detail = next(r["detail"] for r in rows if "detail" in r)
    assert len(detail["far"]) == 15 and max(detail["far"].values()) == 0.0  # the CPU stands in
