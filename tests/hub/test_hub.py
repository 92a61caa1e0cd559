"""rws.hub: hf:// references, model cards, and push → pull → apply through the real
huggingface_hub client against a loopback Hub (olah plus write endpoints, tests/hub_server.py)."""

from __future__ import annotations

import json
import logging
import re
import shutil
import socket
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

import rws
from rws.cli.app import app
from rws.errors import (
    HubConnectionError,
    HubOfflineError,
    HubReferenceError,
    UsageError,
)
from rws.hub.card import model_card
from rws.io.checkpoint import describe_source, open_checkpoint
from rws.io.hashing import file_sha256
from rws.io.hub_fetch import hub_endpoint, is_offline, resolve_path
from rws.io.hub_ref import HubRef, hub_reference, parse_ref
from rws.robustness.report import Report
from tests.hub_server import TOKEN, HubServer

SIG = Path(__file__).resolve().parents[2] / "signatures"
runner = CliRunner()


def cli(*args: str | Path) -> tuple[int, str, str]:
    res = runner.invoke(app, [str(a) for a in args])
    return res.exit_code, res.stdout, res.stderr


def one_error_line(stderr: str) -> str:
    """The CLI's single ``error: …`` line (and nothing else: no traceback)."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def dead_endpoint() -> str:
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


# --- references ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hf://org/fog/fog.rws.safetensors", HubRef("org/fog", "fog.rws.safetensors")),
        ("hf://org/fog/fog.rws.safetensors@v1", HubRef("org/fog", "fog.rws.safetensors", "v1")),
        ("hf://org/fog@v1/fog.rws.safetensors", HubRef("org/fog", "fog.rws.safetensors", "v1")),
        ("hf://org/fog/sub/p.safetensors@refs/pr/1", HubRef("org/fog", "sub/p.safetensors", "refs/pr/1")),
        ("hf://org/fog", HubRef("org/fog")),
        ("hf://org/fog/", HubRef("org/fog")),
        ("hf://Org-1/res.net_20@" + "a" * 40, HubRef("Org-1/res.net_20", None, "a" * 40)),
    ],
)  # fmt: skip
def test_parse_ref(text: str, expected: HubRef) -> None:
    ref = parse_ref(text)
    assert ref == expected
    assert parse_ref(ref.uri) == ref
    assert parse_ref(Path(text)) == ref  # a Path made from it reads hf:/…


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("org/fog/p.safetensors", "expected hf://ORG/NAME/FILE[@REV]"),
        ("hf://", "no repo name"),
        ("hf://org", "no repo name"),
        ("hf:///fog/p", "bad owner ''"),
        ("hf://org/fo g/p", "bad repo name 'fo g'"),
        ("hf://-org/fog/p", "bad owner '-org'"),
        ("hf://org/fog--x/p", "bad repo name 'fog--x'"),
        ("hf://org/fog/p.safetensors@", "empty revision"),
        ("hf://org/fog@v1/p.safetensors@v2", "two revisions"),
        ("hf://org/fog/../p", "bad file path '../p'"),
        ("hf://org/fog/a//p", "bad file path 'a//p'"),
        ("hf://org/fog/p@../../../../x/pwn.sh", "bad revision '../../../../x/pwn.sh'"),
        ("hf://org/fog/p@./main", "bad revision './main'"),
        ("hf://org/fog/p@/main", "bad revision '/main'"),
        ("hf://datasets/org/x", "model repos only"),
    ],
)
def test_parse_ref_refuses_bad_forms(text: str, reason: str) -> None:
    with pytest.raises(HubReferenceError, match=re.escape(reason)) as info:
        parse_ref(text)
    assert info.value.exit_code == 2 and info.value.ref == text
    assert str(info.value).startswith(repr(text)) and "\n" not in str(info.value)


def test_plain_paths_pass_through_and_cache_paths_map_back(tmp_path: Path) -> None:
    p = tmp_path / "x.safetensors"
    assert resolve_path(p) is p and resolve_path("fog.safetensors") == "fog.safetensors"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = tmp_path / "hub" / "models--org--fog" / "snapshots" / commit
    assert (
        hub_reference(snap / "sub" / "p.safetensors") == f"hf://org/fog/sub/p.safetensors@{commit}"
    )
    assert hub_reference(snap) == f"hf://org/fog@{commit}"
    assert hub_reference(p) is None and hub_reference("models--x/snapshots/abc/f") is None


def test_endpoint_and_offline_are_read_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    assert hub_endpoint() == "https://huggingface.co"
    monkeypatch.setenv("HF_ENDPOINT", "http://hf.example/")
    assert hub_endpoint() == "http://hf.example"
    monkeypatch.setenv("RWS_HF_ENDPOINT", "http://rws.example")
    assert hub_endpoint() == "http://rws.example"
    assert hub_endpoint("http://given.example") == "http://given.example"
    with pytest.raises(UsageError, match="expected an http:// or https:// URL"):
        hub_endpoint("ftp://x")
    assert not is_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert is_offline()


# --- model cards ------------------------------------------------------------------------------


def _front_matter(card: str) -> dict:
    m = re.match(r"---\n(.*?)\n---\n", card, re.S)
    assert m, card[:200]
    return yaml.safe_load(m.group(1))


def test_card_metadata_parses_as_the_hub_reads_it(report: Report) -> None:
    from huggingface_hub import ModelCard

    fog, con = rws.load(SIG / "fog.rws.safetensors"), rws.load(SIG / "contrast.rws.safetensors")
    files = [("fog.rws.safetensors", fog), ("con.safetensors", con)]
    card = model_card(files, "acme/digits", report=report, dataset="acme/digits-bench")
    meta = _front_matter(card)
    assert meta["library_name"] == "rws" and meta["pipeline_tag"] == "image-classification"
    assert meta["tags"] == ["rws", "robustness", "fog", "contrast"]  # kind = method = rws
    assert "base_model" not in meta  # the shipped signatures were made from in-memory models
    assert meta["datasets"] == ["acme/digits-bench"] and "license" not in meta
    [entry] = meta["model-index"]
    assert entry["name"] == "digits"
    fog_v = report.variant("fog.rws-int8")
    by = {}
    for r in entry["results"]:
        assert r["dataset"]["type"] == "acme/digits-bench" and r["dataset"]["split"] == "test"
        for m in r["metrics"]:
            by[(m["args"]["patch"], r["dataset"].get("config"), m["name"])] = (r, m)
    assert {p for p, _, _ in by} == {"fog.rws.safetensors", "con.safetensors"}
    r, m = by[("fog.rws.safetensors", None, "clean accuracy")]
    assert (
        m["value"] == round(fog_v.clean, 4) and m["args"]["fingerprint"] == fog.fingerprint()[:12]
    )
    r, m = by[("fog.rws.safetensors", "fog", "accuracy, mean over severities")]
    assert m["value"] == round(fog_v.corruptions["fog"][3], 4)
    assert r["dataset"]["args"]["severities"] == [3] and "3" not in r["dataset"]["name"]
    r, m = by[("fog.rws.safetensors", None, "robust accuracy (pgd)")]
    assert m["value"] == round(fog_v.robust["pgd"], 4)
    assert m["args"]["eps"] == report.settings["eps"] and m["args"]["attack"] == "pgd"
    assert str(report.settings["eps"])[:5] not in r["dataset"]["name"]  # ε is an argument
    parsed = ModelCard(card)  # the client's own parser of model-index
    assert parsed.data.library_name == "rws" and len(parsed.data.eval_results) == 10
    assert {r.task_type for r in parsed.data.eval_results} == {"image-classification"}
    # without a Hub dataset id there is no model-index (the body keeps the tables)
    assert "model-index" not in _front_matter(model_card(files, "acme/digits", report=report))
    # body: the before/after table from the report and the commands to apply the patch
    base = report.base
    assert f"| clean | {100 * base.clean:.1f}% | {100 * fog_v.clean:.1f}% |" in card
    assert f"| fog (mean over severities) | {100 * base.corruptions['fog'][3]:.1f}% |" in card
    # p is the Holm-adjusted one, and the footnote names the tests
    clean_vs = fog_v.vs_base["clean"]
    assert "| Δ | p (Holm) |" in card and clean_vs["p_holm"] >= clean_vs["p_value"]
    assert f"{100 * clean_vs['delta']:+.1f} pt | {clean_vs['p_holm']:.2g} |" in card
    assert "Wilcoxon signed-rank test on per-image mean correctness" in card
    assert "rws apply base.safetensors hf://acme/digits/con.safetensors -o" in card
    assert 'rws.load("hf://acme/digits/con.safetensors")' in card
    assert "32 test examples of digits" in card and "seed 0" in card


def test_card_without_report_and_with_a_known_base(report: Report) -> None:
    fog = rws.load(SIG / "fog.rws.safetensors")
    card = model_card([("fog.rws.safetensors", fog)], "acme/fog")
    assert "model-index" not in _front_matter(card)
    assert "No evaluation was published" in card
    fog = fog.replace(tags={**fog.tags, "base_model": "acme/small-cnn"})
    meta = _front_matter(model_card([("fog.rws.safetensors", fog)], "acme/fog"))
    assert meta["base_model"] == "acme/small-cnn" and meta["base_model_relation"] == "adapter"
    meta = _front_matter(
        model_card([("fog.rws.safetensors", fog)], "acme/fog", base_model="acme/r20", license="mit")
    )
    assert meta["base_model"] == ["acme/r20", "acme/small-cnn"] and meta["license"] == "mit"
    with pytest.raises(HubReferenceError, match="expected a Hub dataset id"):
        model_card([("fog.rws.safetensors", fog)], "acme/fog", dataset="hf://acme/d/x.json")
    # a report from local files names no local folder in the card
    d = report.to_dict()
    d["settings"]["data"] = "cifar10:/home/alice/data"
    card = model_card([("fog.rws.safetensors", fog)], "acme/fog", report=Report.from_dict(d))
    assert "/home/alice" not in card and "test examples of cifar10" in card


# --- errors without a server --------------------------------------------------------------------


def test_cli_errors_are_one_line_with_exit_codes(
    files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = cli("pull", "org")
    assert code == 2 and "no repo name" in one_error_line(err)
    dead = dead_endpoint()
    code, _, err = cli("pull", "acme/fog", "--endpoint", dead)
    assert code == 6 and f"cannot reach the Hub at {dead}" in one_error_line(err)
    code, _, err = cli(
        "push", files / "fog.rws.safetensors", "--repo", "acme/fog", "--endpoint", dead
    )
    assert code == 6 and "no Hugging Face token" in one_error_line(err)
    code, _, err = cli("push", files / "fog.rws.safetensors", "--repo", "acme/fog/x.safetensors")
    assert code == 2 and "expected ORG/NAME" in one_error_line(err)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    code, _, err = cli(
        "push", files / "fog.rws.safetensors", "--repo", "acme/fog", "--endpoint", dead
    )
    assert code == 6 and f"cannot reach the Hub at {dead}" in one_error_line(err)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = files / "out.safetensors"
    code, _, err = cli(
        "apply", files / "clean.safetensors", "hf://acme/fog/fog.rws.safetensors", "-o", out
    )
    line = one_error_line(err)
    assert code == 6 and "not in the Hugging Face cache and HF_HUB_OFFLINE is set" in line
    assert not out.exists()
    code, _, err = cli("push", files / "fog.rws.safetensors", "--repo", "acme/fog")
    assert code == 6 and "cannot push while HF_HUB_OFFLINE is set" in one_error_line(err)
    assert TOKEN not in err


def test_unreachable_file_fetch(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.utils._http as http

    monkeypatch.setattr(http.time, "sleep", lambda s: None)  # the client retries 5× with backoff
    monkeypatch.setenv("RWS_HF_ENDPOINT", dead_endpoint())
    with pytest.raises(HubConnectionError, match="Connection refused") as info:
        rws.load("hf://acme/fog/fog.rws.safetensors")
    assert info.value.exit_code == 6 and info.value.ref == "hf://acme/fog/fog.rws.safetensors"


# --- against the loopback Hub -------------------------------------------------------------------


@pytest.mark.hub
def test_push_pull_apply_round_trip(
    hub: HubServer, files: Path, report: Report, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    report.save_json(files / "eval.json")
    fog, con = files / "fog.rws.safetensors", files / "contrast.rws.safetensors"
    code, out, err = cli(
        "push", fog, con, "--repo", "acme/round-trip", "--private", "--report", files / "eval.json",
        "--message", "first patches", "--endpoint", hub.endpoint,
    )  # fmt: skip
    assert code == 0, err
    assert out.startswith(
        "pushed fog.rws.safetensors, contrast.rws.safetensors, README.md, config.json to "
        "acme/round-trip@main"
    )
    stored = hub.files("acme/round-trip")
    assert stored["fog.rws.safetensors"] == fog.read_bytes()
    assert stored["contrast.rws.safetensors"] == con.read_bytes()
    expected = model_card(
        [("fog.rws.safetensors", rws.load(fog)), ("contrast.rws.safetensors", rws.load(con))],
        "acme/round-trip", report=Report.load_json(files / "eval.json"),
    )  # fmt: skip
    assert stored["README.md"].decode() == expected
    assert hub.created_with("acme/round-trip")["visibility"] == "private"

    code, out, err = cli(
        "pull", "acme/round-trip", "-o", files / "pulled", "--endpoint", hub.endpoint
    )
    assert code == 0, err
    pulled = files / "pulled"
    assert sorted(out.split()) == sorted(str(pulled / n) for n in stored)
    assert {n: (pulled / n).read_bytes() for n in stored} == stored

    monkeypatch.setenv("RWS_HF_ENDPOINT", hub.endpoint)  # every other command takes hf:// too
    ref = "hf://acme/round-trip/fog.rws.safetensors"
    clean = files / "clean.safetensors"
    assert cli("apply", clean, f"{ref}:0.5", "-o", files / "via_hub.safetensors")[0] == 0
    assert cli("apply", clean, f"{fog}:0.5", "-o", files / "local.safetensors")[0] == 0
    assert (files / "via_hub.safetensors").read_bytes() == (
        files / "local.safetensors"
    ).read_bytes()
    code, out, err = cli(
        "remove", files / "via_hub.safetensors", ref, "-o", files / "restored.safetensors"
    )
    assert code == 0, err
    restored, base = load_file(files / "restored.safetensors"), load_file(clean)
    assert all(torch.allclose(restored[k], base[k], rtol=0, atol=1e-6) for k in base)
    code, out, err = cli("inspect", ref, "--json")  # a patch on the Hub is shown as a patch
    assert code == 0, err
    shown = json.loads(out)
    assert shown["type"] == "patch" and shown["fingerprint"] == rws.load(fog).fingerprint()


@pytest.mark.hub
def test_revisions_branches_and_unchanged_pushes(
    hub: HubServer, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("RWS_HF_ENDPOINT", hub.endpoint)
    p = files / "p.rws.safetensors"
    shutil.copyfile(files / "fog.rws.safetensors", p)
    first = rws.push([p], "acme/revs")
    assert rws.push([p], "acme/revs").commit == first.commit  # nothing changed: no new commit
    shutil.copyfile(files / "contrast.rws.safetensors", p)
    second = rws.push([p], "acme/revs", message="contrast now")
    dev = rws.push([files / "fog.rws.safetensors"], "acme/revs", revision="dev")
    assert len({first.commit, second.commit, dev.commit}) == 3 and dev.revision == "dev"
    fog_fp = rws.load(files / "fog.rws.safetensors").fingerprint()
    con_fp = rws.load(files / "contrast.rws.safetensors").fingerprint()
    assert rws.load("hf://acme/revs/p.rws.safetensors").fingerprint() == con_fp
    assert rws.load(f"hf://acme/revs/p.rws.safetensors@{first.commit}").fingerprint() == fog_fp
    assert rws.load(f"hf://acme/revs@{first.commit}/p.rws.safetensors").fingerprint() == fog_fp
    [got] = rws.pull("acme/revs/p.rws.safetensors", revision=first.commit)
    assert got.read_bytes() == (files / "fog.rws.safetensors").read_bytes()
    assert "fog.rws.safetensors" in {q.name for q in rws.pull("hf://acme/revs@dev")}
    assert "fog.rws.safetensors" not in hub.files("acme/revs", "main")
    with pytest.raises(UsageError, match="branch name, not a commit"):
        rws.push([p], "acme/revs", revision=first.commit)
    with pytest.raises(HubReferenceError, match="names revision 'dev', not 'main'"):
        rws.pull("acme/revs@dev", revision="main")


@pytest.mark.hub
def test_hf_checkpoints_and_their_provenance(
    hub: HubServer, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clean = (files / "clean.safetensors").read_bytes()
    commit = hub.create("acme/small-cnn", {"model.safetensors": clean})
    hub.create("acme/base-file", {"clean.safetensors": clean})
    monkeypatch.setenv("RWS_HF_ENDPOINT", hub.endpoint)
    with open_checkpoint("hf://acme/small-cnn") as ck:  # a repo holding model.safetensors
        assert ck.keys() == open_checkpoint(files / "clean.safetensors").keys()
    assert describe_source("hf://acme/small-cnn") == {"path": f"hf://acme/small-cnn@{commit}"}
    origin = SIG / "origin.safetensors"
    patch = rws.extract("hf://acme/base-file/clean.safetensors", origin, codec="int8", shallow=1)
    base = patch.provenance["base"]
    assert re.fullmatch(r"hf://acme/base-file/clean\.safetensors@[0-9a-f]{40}", base["path"])
    assert base["sha256"] == file_sha256(files / "clean.safetensors")
    patch = patch.replace(tags={**patch.tags, "corruption": "fog"})  # pushed as it is now
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    name = f"{patch.fingerprint()[:12]}.rws.safetensors"
    assert rws.push([patch], "acme/d").files == (name, "README.md", "config.json")
    back = rws.load(f"hf://acme/d/{name}")
    assert back.tags == {"corruption": "fog"} and back.provenance["base"] == base
    assert back.fingerprint() == patch.fingerprint()
    card = hub.files("acme/d")["README.md"].decode()
    assert _front_matter(card)["base_model"] == "acme/base-file"
    assert f"rws apply {base['path']} hf://acme/d/{name} -o" in card
    # the patch applies to the hf:// base it names, fetched from the Hub by its pinned reference
    out = files / "patched.safetensors"
    assert cli("apply", base["path"], f"hf://acme/d/{name}", "-o", out)[0] == 0
    assert load_file(out).keys() == load_file(files / "clean.safetensors").keys()


@pytest.mark.hub
def test_offline_mode_and_unreachable_server_use_the_cache(
    hub: HubServer, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.create("acme/cached", {"fog.rws.safetensors": (files / "fog.rws.safetensors").read_bytes()})
    monkeypatch.setenv("RWS_HF_ENDPOINT", hub.endpoint)
    ref = "hf://acme/cached/fog.rws.safetensors"
    fp = rws.load(ref).fingerprint()
    monkeypatch.setenv("RWS_HF_ENDPOINT", dead_endpoint())
    assert rws.load(ref).fingerprint() == fp  # online but unreachable: the cached copy
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert rws.load(ref).fingerprint() == fp
    with pytest.raises(HubOfflineError, match="not in the Hugging Face cache"):
        rws.load("hf://acme/cached/other.rws.safetensors")
    code, out, err = cli("pull", "acme/cached/fog.rws.safetensors")
    assert code == 0 and out.strip().endswith("fog.rws.safetensors"), err


@pytest.mark.hub
def test_not_found_errors(hub: HubServer, files: Path) -> None:
    hub.create(
        "acme/two",
        {n: (files / n).read_bytes() for n in ("fog.rws.safetensors", "contrast.rws.safetensors")},
    )
    e = hub.endpoint
    cases = [
        (["pull", "acme/nope/p.safetensors"], 6, f"no repo acme/nope on {e} (if it is private or gated"),
        (["pull", "acme/two/p.safetensors"], 6,
         "repo acme/two has no file 'p.safetensors' at revision 'main'; it has: "
         ".gitattributes, contrast.rws.safetensors, fog.rws.safetensors"),
        (["pull", "acme/two/fog.rws.safetensors@v9"], 6, "repo acme/two has no revision 'v9'"),
        (["pull", "acme/nope"], 6, "no repo acme/nope"),
        (["apply", files / "clean.safetensors", "hf://acme/two", "-o", files / "o.safetensors"], 2,
         "the repo holds 2 .safetensors files (contrast.rws.safetensors, fog.rws.safetensors); name one"),
    ]  # fmt: skip
    for args, exit_code, text in cases:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("RWS_HF_ENDPOINT", e)
            code, _, err = cli(*args)
        assert code == exit_code and text in one_error_line(err), (args, err)


@pytest.mark.hub
def test_tokens_never_leak(
    hub: HubServer,
    files: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    import huggingface_hub.hf_api  # noqa: F401 (importing its modules resets its log level)

    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="huggingface_hub")  # its own level is WARNING
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    code, out, err = cli(
        "-vv",
        "push",
        files / "fog.rws.safetensors",
        "--repo",
        "acme/secret",
        "--endpoint",
        hub.endpoint,
    )
    assert code == 0, err
    code, out2, err2 = cli(
        "-vv", "pull", "acme/secret", "-o", files / "got", "--endpoint", hub.endpoint
    )
    assert code == 0, err2
    wrong = "hf_wrongTokenThatMustNotBePrinted000"
    monkeypatch.setenv("HF_TOKEN", wrong)
    code, out3, err3 = cli(
        "push",
        files / "contrast.rws.safetensors",
        "--repo",
        "acme/secret",
        "--endpoint",
        hub.endpoint,
    )
    assert code == 6 and "refused the request (HTTP 401" in one_error_line(err3)
    assert "pushing fog.rws.safetensors, README.md, config.json to acme/secret@main" in caplog.text
    hosts = set(re.findall(r"connect_tcp\.started host='([^']+)'", caplog.text))
    assert hosts <= {"127.0.0.1"}  # every new connection stayed on the loopback
    names = {r.name.split(".")[0] for r in caplog.records}
    assert {"rws", "huggingface_hub", "httpx2"} <= names, names  # rws, the client, its HTTP layer
    for text in (out, err, out2, err2, out3, err3, caplog.text):
        assert TOKEN not in text and wrong not in text
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written and not any(TOKEN.encode() in p.read_bytes() for p in written)
    assert not any(TOKEN.encode() in b for b in hub.files("acme/secret").values())
    assert not (tmp_path / "hf-token").exists()


@pytest.mark.hub
def test_downloads_are_verified_and_cache_write_errors_are_one_line(
    hub: HubServer, files: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Issue 17 items 6 and 13: a same-size flip in a cached blob is refused (exit 4, online and
    offline); a cache folder that cannot be written is one line, not a traceback."""
    from huggingface_hub import constants

    hub.create("acme/flip", {"fog.rws.safetensors": (files / "fog.rws.safetensors").read_bytes()})
    monkeypatch.setenv("RWS_HF_ENDPOINT", hub.endpoint)
    ref = "hf://acme/flip/fog.rws.safetensors"
    assert cli("inspect", ref)[0] == 0
    local = Path(resolve_path(ref))
    blob = local.resolve()
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))
    for offline in ("0", "1"):
        monkeypatch.setenv("HF_HUB_OFFLINE", offline)
        code, _, err = cli("inspect", ref)
        assert code == 4 and f"{local}: the cached copy of {ref}" in one_error_line(err)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    (tmp_path / "a-file").write_text("")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "a-file" / "hub"))
    code, _, err = cli("inspect", ref)
    assert code == 1 and "cannot write the Hugging Face cache" in one_error_line(err)
