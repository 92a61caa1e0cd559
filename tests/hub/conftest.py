"""Fixtures of the Hub tests: an isolated Hugging Face cache, the shipped files, a small real
report and the loopback Hub (one per session)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from safetensors.torch import load_file

import rws
from rws.robustness.report import Report
from tests.hub_server import HubServer

SIG = Path(__file__).resolve().parents[2] / "signatures"


@pytest.fixture(autouse=True)
def _hf_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A fresh Hugging Face cache and token file per test; no endpoint, token or offline setting."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf-tokens"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # The client's User-Agent code otherwise fetches an "agent harness" list from huggingface.co
    # (its import-time endpoint, whatever endpoint= says): no traffic leaves the loopback.
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    for var in ("RWS_HF_ENDPOINT", "HF_ENDPOINT", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)


@pytest.fixture()
def files(tmp_path: Path) -> Path:
    """The shipped clean model and two of its signatures, copied into a work folder."""
    work = tmp_path / "work"
    work.mkdir()
    for name in ("clean.safetensors", "fog.rws.safetensors", "contrast.rws.safetensors"):
        shutil.copyfile(SIG / name, work / name)
    return work


@pytest.fixture(scope="session")
def report() -> Report:
    """A real (small) `rws eval` of the two signatures on the shipped clean model."""
    from rws.models import create_model

    model = create_model("resnet20")
    model.load_state_dict(load_file(SIG / "clean.safetensors"))
    patches = [rws.load(SIG / "fog.rws.safetensors"), rws.load(SIG / "contrast.rws.safetensors")]
    return rws.evaluate(
        model.eval(), "digits", corruptions=["fog", "contrast"], severities=[3], attack="pgd",
        steps=1, patches=patches, n_examples=32, device="cpu", check_masking=False,
    )  # fmt: skip


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    pytest.importorskip("olah", reason="the loopback Hub needs olah (the hub-test extra)")
    server = HubServer(tmp_path_factory.mktemp("hub")).start()
    yield server
    server.stop()
