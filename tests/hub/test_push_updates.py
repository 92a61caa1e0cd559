"""Pushing to a repo that already holds patches: the card is updated, not replaced; pull requests,
opt-in eval results, config.json, and PEFT-style ``Patch.push_to_hub`` / ``Patch.from_pretrained``."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import rws
from rws.cli.app import app
from rws.errors import HubReferenceError, UsageError
from rws.patching.patch import Patch
from rws.robustness.report import Report
from tests.hub_server import TOKEN, HubServer

runner = CliRunner()


def _front(card: str) -> dict:
    m = re.match(r"---\n(.*?)\n---\n", card, re.S)
    assert m, card[:200]
    return yaml.safe_load(m.group(1))


def _results(card: str) -> dict[tuple[str, str], float]:
    [entry] = _front(card)["model-index"]
    return {
        (m["args"]["patch"], m["name"]): m["value"] for r in entry["results"] for m in r["metrics"]
    }


def test_push_options_are_checked_before_any_request(files: Path) -> None:
    fog = files / "fog.rws.safetensors"
    with pytest.raises(UsageError, match="need the benchmark's dataset id"):
        rws.push([fog], "acme/x", eval_results=True)
    with pytest.raises(UsageError, match="pull request against main, not 'dev'"):
        rws.push([fog], "acme/x", create_pr=True, revision="dev")
    res = runner.invoke(app, ["push", str(fog), "--repo", "acme/x", "--base-model", "acme/r@v1"])
    assert res.exit_code == 2 and "expected a model repo ORG/NAME" in res.stderr


@pytest.mark.hub
def test_a_second_push_keeps_the_first_patch_s_row_and_results(
    hub: HubServer, files: Path, report: Report, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("RWS_HF_ENDPOINT", hub.endpoint)
    fog, con = files / "fog.rws.safetensors", files / "contrast.rws.safetensors"
    bench = "acme/digits-bench"
    rws.push([fog], "acme/two-pushes", report=report, dataset=bench, license="mit",
             base_model="acme/r20")  # fmt: skip
    first = hub.files("acme/two-pushes")["README.md"].decode()
    rws.push([con], "acme/two-pushes")  # no report, no options: the card is updated
    stored = hub.files("acme/two-pushes")
    card = stored["README.md"].decode()
    meta = _front(card)
    assert meta["license"] == "mit" and meta["base_model"] == "acme/r20"
    assert meta["datasets"] == [bench] and meta["tags"] == ["rws", "robustness", "fog", "contrast"]
    assert _results(card) == _results(first)  # fog's results are kept
    assert all(p == "fog.rws.safetensors" for p, _ in _results(card))
    for name in ("fog.rws.safetensors", "contrast.rws.safetensors"):  # both rows in Files
        fp = rws.load(files / name).fingerprint()[:12]
        assert re.search(rf"^\| `{re.escape(name)}` \|.*\| `{fp}` \|$", card, re.M), name
    fog_section = re.search(r"^### `fog\.rws\.safetensors`.*?(?=^##|\Z)", first, re.S | re.M)
    assert fog_section is not None and fog_section.group(0).strip() in card
    config = json.loads(stored["config.json"])
    assert config["library_name"] == "rws"
    assert [p["file"] for p in config["patches"]] == ["fog.rws.safetensors", con.name]
    # the same push again changes nothing, so it makes no commit
    head = hub.files("acme/two-pushes")
    assert rws.push([con], "acme/two-pushes").files[-1] == "config.json"
    assert hub.files("acme/two-pushes") == head
    # replacing fog's file with other contents drops its (now stale) results and table
    shutil.copyfile(con, fog)
    rws.push([fog], "acme/two-pushes")
    card = hub.files("acme/two-pushes")["README.md"].decode()
    assert "model-index" not in _front(card) and "### `fog.rws.safetensors`" not in card


@pytest.mark.hub
def test_create_pr_eval_results_and_a_foreign_config(
    hub: HubServer, files: Path, report: Report, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import parse_eval_result_entries

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    foreign = b'{"model_type": "resnet"}\n'
    hub.create("acme/pr", {"config.json": foreign})
    report.save_json(files / "eval.json")
    res = runner.invoke(app, [
        "push", str(files / "fog.rws.safetensors"), "--repo", "acme/pr", "--create-pr",
        "--report", str(files / "eval.json"), "--dataset", "acme/digits-bench:fog",
        "--eval-results", "--endpoint", hub.endpoint,
    ])  # fmt: skip
    assert res.exit_code == 0, res.stderr
    assert f"to pull request {hub.endpoint}/acme/pr/discussions/1:" in res.stdout
    assert set(hub.files("acme/pr")) == {".gitattributes", "config.json"}  # main unchanged
    pr = hub.files("acme/pr", "refs/pr/1")
    assert pr["config.json"] == foreign  # not written by rws: left alone
    [entry] = parse_eval_result_entries(yaml.safe_load(pr[".eval_results/fog.rws.yaml"]))
    fog_v = report.variant("fog.rws-int8")
    assert (entry.dataset_id, entry.task_id) == ("acme/digits-bench", "fog")
    assert entry.value == round(fog_v.mean_corruption, 4)
    assert "mean corruption accuracy over fog, contrast at severities 3" in entry.notes
    assert _front(pr["README.md"].decode())["datasets"] == ["acme/digits-bench"]


@pytest.mark.hub
def test_patch_push_to_hub_and_from_pretrained(
    hub: HubServer, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("RWS_HF_ENDPOINT", hub.endpoint)
    fog = rws.load(files / "fog.rws.safetensors")
    res = fog.push_to_hub("acme/peft-habits", base_model="acme/r20")
    assert res.files == ("fog.rws.safetensors", "README.md", "config.json")
    assert _front(hub.files("acme/peft-habits")["README.md"].decode())["base_model"] == "acme/r20"
    for ref in ("acme/peft-habits", "hf://acme/peft-habits", f"acme/peft-habits@{res.commit}"):
        assert Patch.from_pretrained(ref).fingerprint() == fog.fingerprint(), ref
    got = Patch.from_pretrained("acme/peft-habits", "fog.rws.safetensors", revision=res.commit)
    assert got.fingerprint() == fog.fingerprint()
    rws.push([files / "contrast.rws.safetensors"], "acme/peft-habits")
    with pytest.raises(HubReferenceError, match=r"holds 2 \.safetensors files"):
        Patch.from_pretrained("acme/peft-habits")
    local = files / "one"
    local.mkdir()
    shutil.copyfile(files / "fog.rws.safetensors", local / "fog.rws.safetensors")
    assert Patch.from_pretrained(local).fingerprint() == fog.fingerprint()
    assert Patch.from_pretrained(files, "fog.rws.safetensors").fingerprint() == fog.fingerprint()
