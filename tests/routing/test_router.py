"""rws.Router on the shipped digits ResNet-20 and its signature library (signatures/)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

import rws
from rws.data import ImageDataset
from rws.errors import BaseMismatchError, BatchMismatchError, MalformedInputError, UsageError
from rws.models import load_model
from rws.robustness.corruptions import corrupt
from rws.routing import Router
from rws.routing.heads import Head, fit_head
from tests.conftest import run

ROOT = Path(__file__).resolve().parents[2]
SIGS = ROOT / "signatures"
FIT = {"fit_batches": 6, "fit_batch_size": 16}


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return load_model("resnet20", SIGS / "clean.safetensors", 10).eval()


@pytest.fixture(scope="module")
def router(model: torch.nn.Module, digits: ImageDataset) -> Router:
    return Router(model, SIGS, data=(digits.val.x, digits.val.y), **FIT)


def _batch(digits: ImageDataset, corruption: str | None, n: int = 48, sev: int = 5) -> torch.Tensor:
    x = digits.test.x[:n]
    return x if corruption is None else corrupt(x, corruption, sev, generator=torch.Generator())


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_hard_routing_applies_the_chosen_signature_and_restores_bit_for_bit(
    router: Router, model: torch.nn.Module, digits: ImageDataset
) -> None:
    before = _state(model)
    sig = {e.corruption: e.patch for e in router.entries}
    for corruption in ("fog", "contrast", None):
        x = _batch(digits, corruption)
        with torch.no_grad():
            out = router(x)
            want = corruption or "none"
            assert router.last is not None and router.last.choice == want
            assert 0.5 < router.last.confidence <= 1.0
            if corruption is None:
                ref = model(x)
            else:
                with rws.patched(model, sig[corruption]):
                    ref = model(x)
        assert torch.equal(out, ref)  # the same arithmetic as rws.patched, bit for bit
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)
    assert router.last.overhead_s >= 0 and router.last.forward_s > 0


def test_soft_mode_composes_signatures_by_confidence(
    model: torch.nn.Module, router: Router, digits: ImageDataset
) -> None:
    soft = Router(model, SIGS, detector=router.detector, mode="soft", input_shape=(3, 32, 32))
    x = _batch(digits, "fog", sev=3)
    with torch.no_grad():
        out = soft(x)
        last = soft.last
        assert last is not None and last.weights and sum(last.weights.values()) <= 1 + 1e-9
        assert last.weights == {c: p for c, p in last.probabilities.items()
                                if c != "none" and p >= 0.01}  # fmt: skip
        items = [(e.patch, last.weights[e.corruption]) for e in soft.entries
                 if e.corruption in last.weights]  # fmt: skip
        with rws.patched(model, *items):
            ref = model(x)
    assert torch.equal(out, ref)


def test_saved_router_loads_with_identical_choices_and_no_pickle(
    router: Router, model: torch.nn.Module, digits: ImageDataset, tmp_path: Path
) -> None:
    path = tmp_path / "r.safetensors"
    router.save(str(path))
    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()["rws_router"])
        assert all(fh.get_tensor(k).dtype == torch.float64 for k in fh.keys())  # noqa: SIM118
    assert meta["classes"] == ["none", "impulse_noise", "fog", "contrast"]
    assert all(not Path(i["reference"]).is_absolute() for i in meta["library"])
    loaded = Router.load(str(path), model)
    assert loaded.classes == router.classes and loaded.settings == router.settings
    for corruption in (None, "impulse_noise", "gaussian_noise"):
        x = _batch(digits, corruption, n=16, sev=2)
        a, b = router.route(x), loaded.route(x)
        assert a.choice == b.choice and a.probabilities == b.probabilities  # bit-identical
        with torch.no_grad():
            assert torch.equal(router(x), loaded(x))


def test_in_memory_signature_is_written_beside_the_saved_router(
    model: torch.nn.Module, router: Router, tmp_path: Path, digits: ImageDataset
) -> None:
    fog = rws.load(SIGS / "fog.rws.safetensors")
    mem = fog.replace(source="", scale=0.5)
    r = Router(model, [(mem, "fog")], data=(digits.val.x, digits.val.y), fit_batches=3,
               fit_batch_size=8, detector="activation")  # fmt: skip
    r.save(str(tmp_path / "r.safetensors"))
    assert (tmp_path / "r.fog.safetensors").is_file()
    loaded = Router.load(str(tmp_path / "r.safetensors"), model)
    assert loaded.entries[0].patch.scale == 0.5
    assert loaded.entries[0].patch.fingerprint() == fog.fingerprint()


def test_gradients_flow_through_the_routed_model_without_touching_weights(
    router: Router, model: torch.nn.Module, digits: ImageDataset
) -> None:
    before = _state(model)
    x = _batch(digits, "fog", n=8).requires_grad_(True)
    out = router(x)
    out.logsumexp(1).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    with torch.no_grad():
        torch.testing.assert_close(out.detach(), router(x.detach()), rtol=1e-5, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_concurrent_calls_are_serialised(router: Router, digits: ImageDataset) -> None:
    xs = [_batch(digits, c, n=16) for c in ("fog", "contrast", None)]
    with torch.no_grad():
        want = [router(x) for x in xs]
    got: dict[int, torch.Tensor] = {}

    def work(i: int) -> None:
        with torch.no_grad():
            got[i] = router(xs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(got[i], want[i]) for i in range(len(xs)))


def test_another_base_is_refused_at_construction(model: torch.nn.Module, router: Router) -> None:
    other = load_model("resnet20", SIGS / "origin.safetensors", 10)
    with pytest.raises(BaseMismatchError, match=r"signature .*\(impulse_noise\).*conv1.weight"):
        Router(other, SIGS, detector=router.detector, input_shape=(3, 32, 32))


def test_bad_batches_and_bad_construction_are_one_line_errors(
    router: Router, model: torch.nn.Module, digits: ImageDataset
) -> None:
    for bad in (torch.rand(2, 3, 28, 28), torch.rand(2, 3, 32, 32, dtype=torch.float64),
                torch.rand(3, 32, 32), torch.rand(0, 3, 32, 32)):  # fmt: skip
        with pytest.raises(BatchMismatchError, match=r"^batch: expected float32 \(N, 3, 32, 32\)"):
            router(bad)
    with pytest.raises(UsageError, match="library is empty"):
        Router(model, [], data=(digits.val.x, digits.val.y))
    with pytest.raises(UsageError, match="without labels"):
        Router(model, SIGS, data=digits.val.x)
    with pytest.raises(UsageError, match="no corruption tag"):
        Router(model, [rws.load(SIGS / "fog.rws.safetensors").replace(tags={})],
               data=(digits.val.x, digits.val.y))  # fmt: skip
    with pytest.raises(UsageError, match="unknown routing mode"):
        Router(model, SIGS, detector=router.detector, mode="best", input_shape=(3, 32, 32))


def test_malformed_router_file(tmp_path: Path, model: torch.nn.Module) -> None:
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(MalformedInputError, match="not a router file"):
        Router.load(str(bad), model)
    with pytest.raises(MalformedInputError, match="without router settings"):
        Router.load(str(SIGS / "fog.rws.safetensors"), model)


def test_heads_store_as_arrays_and_predict_identically() -> None:
    rng = np.random.default_rng(0)
    feats = np.concatenate([rng.normal(0, 1, (30, 5)), rng.normal(3, 1, (30, 5))])
    labels = np.repeat([0, 1], 30)
    for kind in ("logistic", "centroid"):
        head = fit_head(kind, feats, labels, 2, reject=0.99)
        again = Head.from_arrays(kind, head.arrays())
        p, r = head.predict(feats)
        p2, r2 = again.predict(feats)
        assert np.array_equal(p, p2) and np.array_equal(r, r2)
        assert (p.argmax(1) == labels).mean() > 0.95
        _, rejected = head.predict(np.full((1, 5), 50.0))
        assert rejected[0]


def test_cli_route_then_eval_with_the_routed_variant(tmp_path: Path) -> None:
    out = tmp_path / "router.safetensors"
    code, stdout, stderr = run("route", "--arch", "resnet20", "--weights",
                               SIGS / "clean.safetensors", "-l", SIGS, "-o", out,
                               "--fit-batches", "4", "--detector", "activation")  # fmt: skip
    assert code == 0, stderr
    assert "routed right" in stdout and out.is_file()
    code, stdout, stderr = run("eval", "--arch", "resnet20", "--weights",
                               SIGS / "clean.safetensors", "--route", out, "--corruptions",
                               "fog", "--severities", "5", "--n-examples", "48",
                               "--out", tmp_path / "r.json")  # fmt: skip
    assert code == 0, stderr
    report = json.loads((tmp_path / "r.json").read_text())
    names = [v["name"] for v in report["variants"]]
    assert names == ["base", "routed"]
    routed = report["variants"][1]
    assert routed["corruptions"]["fog"]["5"] > report["variants"][0]["corruptions"]["fog"]["5"]


def test_cli_route_refuses_an_empty_library(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    code, _, stderr = run("route", "--arch", "resnet20", "--weights",
                          SIGS / "clean.safetensors", "-l", tmp_path / "lib", "-o",
                          tmp_path / "r.safetensors")  # fmt: skip
    assert code == 2 and stderr.count("\n") == 1 and "no signatures" in stderr
