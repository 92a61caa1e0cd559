"""rws.runtime.progress: one progress bar factory on stderr, with a global off switch."""

from __future__ import annotations

import pytest

from rws.runtime.progress import ENV_OFF, progress_bar, progress_enabled


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make rich treat the captured stderr as a terminal, so an enabled bar draws."""
    monkeypatch.delenv(ENV_OFF, raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    monkeypatch.setenv("FORCE_COLOR", "1")


def _run(**kwargs: bool) -> None:
    with progress_bar("epochs", 3, **kwargs) as advance:
        for _ in range(3):
            advance()


@pytest.mark.parametrize(
    ("value", "enabled"),
    [(None, True), ("", True), ("0", True), (" 0 ", True), ("1", False), ("yes", False)],
)
def test_progress_enabled_reads_the_switch(
    monkeypatch: pytest.MonkeyPatch, value: str | None, enabled: bool
) -> None:
    if value is None:
        monkeypatch.delenv(ENV_OFF, raising=False)
    else:
        monkeypatch.setenv(ENV_OFF, value)
    assert ENV_OFF == "RWS_NO_PROGRESS"
    assert progress_enabled() is enabled
    assert progress_enabled(False) is False  # a bar not asked for stays off


@pytest.mark.usefixtures("terminal")
def test_enabled_bar_renders_to_stderr_only(capsys: pytest.CaptureFixture[str]) -> None:
    _run()
    out, err = capsys.readouterr()
    assert out == ""
    assert "epochs" in err and "100%" in err


def test_no_bar_lines_when_stderr_is_not_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Piped or logged stderr gets nothing (rich would leave a blank line per transient bar)."""
    for name in (ENV_OFF, "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)
    _run()
    assert capsys.readouterr() == ("", "")


@pytest.mark.usefixtures("terminal")
def test_environment_switch_turns_bars_off(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(ENV_OFF, "1")
    _run()
    assert capsys.readouterr() == ("", "")


@pytest.mark.usefixtures("terminal")
def test_disabled_bar_draws_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    _run(enabled=False)
    assert capsys.readouterr() == ("", "")


def test_advance_takes_steps_and_fields() -> None:
    with progress_bar("batches", None, enabled=False) as advance:
        advance()
        advance(5)
        advance(0, description="batches (done)")
