"""The hardening corpus, input/output side (issue 17 items 1–7, 12, 13, 17, 18): one case a row,
each checked for its exit code, one error line, nothing written and inputs unchanged."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rws.io.atomic import temp_name
from tests.hardening.conftest import Case, Workspace, check_case, invoke, safetensors_bytes

OUT = "{tmp}/out.safetensors"
APPLY = ["apply", "{base}", "{patch}", "-o"]
F32 = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}


def fifo(name: str):
    def make(ws: Workspace) -> None:
        os.mkfifo(ws.tmp / name)
        ws.add(name.replace(".", "_"), ws.tmp / name)

    return make


def link(name: str, target: str):
    def make(ws: Workspace) -> None:
        os.symlink(ws.fill(target), ws.tmp / name)
        ws.add(name, ws.tmp / name)

    return make


def crafted(name: str, header: str | dict, data: bytes = bytes(4)):
    def make(ws: Workspace) -> None:
        ws.add("bad", ws.write(name, safetensors_bytes(header, data)))

    return make


def sharded_index(index: object):
    def make(ws: Workspace) -> None:
        raw = index if isinstance(index, str) else json.dumps(index)
        (ws.tmp / "sharded" / "model.safetensors.index.json").write_text(raw)

    return make


def copy_as(name: str, src: str):
    def make(ws: Workspace) -> None:
        (ws.tmp / name).write_bytes(Path(ws.fill(src)).read_bytes())
        ws.add(name, ws.tmp / name)

    return make


LONG = "a" * 243 + ".safetensors"  # 255 bytes: NAME_MAX

CASES = [
    # baseline: the harness itself
    Case("apply-ok", [*APPLY, OUT], 0, allowed=[OUT]),
    Case("apply-sharded-ok", ["apply", "{sharded}", "{patch}", "-o", OUT], 0, allowed=[OUT]),
    # 1: revisions are validated like file parts
    Case("rev-dotdot", ["inspect", "hf://acme/m/f.safetensors@../../../../x/pwn.sh"], 2,
         ok_output="bad revision"),
    Case("rev-dot", ["inspect", "hf://acme/m/f.safetensors@./main"], 2, ok_output="bad revision"),
    Case("rev-empty-seg", ["inspect", "hf://acme/m/f.safetensors@a//b"], 2),
    Case("rev-leading-slash", ["inspect", "hf://acme/m/f.safetensors@/etc"], 2),
    Case("rev-pull", ["pull", "acme/m/f@../../x"], 2, ok_output="bad revision"),
    Case("rev-pull-option", ["pull", "acme/m", "--revision", "../x"], 2),
    # 2: every output is checked: diff --plot, extract --plot
    Case("diff-plot-over-input", ["diff", "{base}", "{tuned}", "--plot", "{base}"], 2,
         ok_output="is also an input"),
    Case("diff-plot-over-extensionless", ["diff", "{model}", "{tuned}", "--plot", "{model}"], 2,
         make=copy_as("model", "{base}")),
    Case("extract-plot-equals-output", ["extract", "{base}", "{tuned}", "-o", "{tmp}/p.rws",
                                         "--plot", "{tmp}/p.rws"], 2, ok_output="given to both"),
    Case("scale-over-itself", ["scale", "{patch}", "2", "-o", "{patch}"], 2),
    # 3: a sharded checkpoint's index and shards are inputs
    Case("apply-over-index", ["apply", "{sharded}", "{patch}", "-o", "{index}"], 2,
         ok_output="is also an input"),
    Case("apply-over-shard", ["apply", "{sharded}", "{patch}", "-o", "{shard2}"], 2),
    Case("apply-over-input-by-link", [*APPLY, "{alias}"], 2, make=link("alias", "{base}")),
    # 4: special files are never replaced
    Case("apply-onto-fifo", [*APPLY, "{out_fifo}"], 2, make=fifo("out.fifo"),
         ok_output="FIFO"),
    Case("apply-onto-dev-null", [*APPLY, "/dev/null"], 2, ok_output="/dev/null"),
    Case("apply-onto-dev-stdout", [*APPLY, "/dev/stdout"], 2),
    Case("apply-onto-link-to-dev", [*APPLY, "{devlink}"], 2, make=link("devlink", "/dev/null")),
    Case("apply-onto-dangling-link", [*APPLY, "{dangling}"], 2,
         make=link("dangling", "{tmp}/nowhere")),
    Case("extract-onto-fifo", ["extract", "{base}", "{tuned}", "-o", "{p_fifo}"], 2,
         make=fifo("p.fifo")),
    # 5: nothing is written inside the Hugging Face cache
    Case("apply-into-hf-cache", [*APPLY, "{tmp}/hf/hub/out.safetensors"], 2,
         make=lambda ws: (ws.tmp / "hf" / "hub").mkdir(parents=True),
         env={"HF_HOME": "{tmp}/hf"}, ok_output="Hugging Face cache"),
    Case("apply-into-hub-cache", [*APPLY, "{tmp}/c/x.safetensors"], 2,
         make=lambda ws: (ws.tmp / "c").mkdir(), env={"HF_HUB_CACHE": "{tmp}/c"}),
    # 12: strict safetensors headers
    Case("dup-tensor-key", ["inspect", "{bad}"], 3, ok_output="duplicate key",
         make=crafted("dup.safetensors", '{"a": %s, "a": %s}' % ((json.dumps(F32),) * 2))),
    Case("dup-field-key", [*APPLY[:1], "{bad}", "{patch}", "-o", OUT], 3,
         make=crafted("dupf.safetensors",
                      '{"a": {"dtype": "F32", "shape": [1], "shape": [1], "data_offsets": [0, 4]}}')),
    Case("dim-float", ["inspect", "{bad}"], 3, make=crafted("f.safetensors",
         {"a": {"dtype": "F32", "shape": [512.7], "data_offsets": [0, 4]}})),
    Case("dim-bool", ["inspect", "{bad}"], 3, make=crafted("b.safetensors",
         {"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}})),
    Case("dim-string", ["inspect", "{bad}"], 3, make=crafted("s.safetensors",
         {"a": {"dtype": "F32", "shape": ["1"], "data_offsets": [0, 4]}})),
    # 17: crafted JSON never crashes or hangs a reader; special files are refused as inputs
    Case("deep-nesting", ["inspect", "{bad}"], 3, ok_output="nested too deeply",
         make=crafted("deep.safetensors", "[" * 200_000 + "]" * 200_000)),
    Case("huge-number-in-shape", ["inspect", "{bad}"], 3, ok_output="out of range",
         make=crafted("n.safetensors", '{"a": {"dtype": "F32", "shape": [1e400], '
                                       '"data_offsets": [0, 4]}}')),
    Case("huge-number-in-offsets", [*APPLY[:1], "{bad}", "{patch}", "-o", OUT], 3,
         make=crafted("o.safetensors", '{"a": {"dtype": "F32", "shape": [1], '
                                       '"data_offsets": [0, 1e400]}}')),
    Case("index-map-a-list", ["inspect", "{sharded}"], 3, make=sharded_index({"weight_map": []})),
    Case("index-map-of-numbers", ["inspect", "{sharded}"], 3,
         make=sharded_index({"weight_map": {"fc1.weight": 1}})),
    Case("index-deep", ["inspect", "{sharded}"], 3, make=sharded_index("[" * 200_000)),
    Case("index-dup-key", ["inspect", "{sharded}"], 3,
         make=sharded_index('{"weight_map": {}, "weight_map": {}}')),
    Case("index-shard-outside", ["apply", "{sharded}", "{patch}", "-o", OUT], 3,
         make=sharded_index({"weight_map": {"fc1.weight": "../base.safetensors"}}),
         ok_output="lies outside the folder"),
    Case("index-shard-absolute", ["inspect", "{sharded}"], 3,
         make=sharded_index({"weight_map": {"fc1.weight": "/etc/passwd"}})),
    Case("order-file-deep", ["extract", "{base}", "{tuned}", "-o", "{tmp}/p.rws", "--shallow", "1",
                             "--order-from", "{names}"], 3,
         make=lambda ws: ws.write("names.json", "[" * 200_000)),
    Case("fifo-as-checkpoint", ["inspect", "{in_fifo}"], 2, make=fifo("in.fifo"), ok_output="FIFO"),
    Case("fifo-as-base", ["apply", "{in_fifo}", "{patch}", "-o", OUT], 2, make=fifo("in.fifo")),
    Case("fifo-as-patch", ["apply", "{base}", "{in_fifo}", "-o", OUT], 2, make=fifo("in.fifo")),
    Case("dev-zero-as-base", ["apply", "/dev/zero", "{patch}", "-o", OUT], 2),
    # 18: eval's outputs: not the baseline, not one path for two outputs
    Case("eval-out-is-baseline", ["eval", "--arch", "small-cnn", "--weights", "{base}",
                                  "--baseline", "{b}", "--out", "{b}"], 2,
         make=lambda ws: ws.write("b.json", "{}")),
    Case("eval-out-is-csv", ["eval", "--arch", "small-cnn", "--weights", "{base}",
                             "--out", "{tmp}/r.txt", "--csv", "{tmp}/r.txt"], 2,
         ok_output="given to both --out and --csv"),
    # 13: a 255-byte output name is writable; click usage errors are one line
    Case("name-of-255-bytes", [*APPLY, "{tmp}/" + LONG], 0, allowed=["{tmp}/" + LONG]),
    Case("usage-bad-option", ["apply", "--bogus"], 2, ok_output="No such option"),
    Case("usage-missing-argument", ["apply"], 2, ok_output="Missing argument"),
    Case("usage-bad-number", ["scale", "{patch}", "x", "-o", OUT], 2),
    Case("usage-unknown-command", ["nope"], 2),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_corpus(case: Case, ws: Workspace) -> None:
    check_case(case, ws)


# --- rows that need more than arguments ----------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_stale_temp_files_of_the_output_are_removed_and_logged(
    ws: Workspace, caplog: pytest.LogCaptureFixture
) -> None:
    """Item 7: a temp file whose process is gone is removed (and said so) by the next write of
    the same output; a live process's temp file and other outputs' temp files are kept."""
    out = ws.tmp / "out.safetensors"
    stale = ws.tmp / temp_name(str(out), pid=_dead_pid())
    live = ws.tmp / temp_name(str(out))  # this process: alive
    other = ws.tmp / temp_name(str(ws.tmp / "other.safetensors"), pid=_dead_pid())
    for p in (stale, live, other):
        p.write_bytes(b"half-written")
    assert len(stale.name.encode()) < 100 and stale.name.endswith(".tmp")
    caplog.set_level("WARNING", "rws.io.atomic")
    res = check_case(Case("stale", [*APPLY, OUT], 0, allowed=[OUT, str(stale)]), ws)
    assert not stale.exists() and live.exists() and other.exists()
    assert res.exit_code == 0
    said = [r.getMessage() for r in caplog.records if r.name == "rws.io.atomic"]
    assert len(said) == 1 and f"removed {stale}" in said[0] and "which is gone" in said[0]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_stop_signal_mid_write_removes_the_temp_file(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch, signum: int
) -> None:
    """Item 7: SIGTERM and SIGHUP mid-write unwind like Ctrl-C: one error line, exit 128 + N,
    no temp file, the previous output untouched, the handlers restored."""
    (ws.tmp / "out.safetensors").write_bytes(b"previous")
    fsync = os.fsync
    before = signal.getsignal(signum)

    def killed(fd: int) -> None:
        os.kill(os.getpid(), signum)
        fsync(fd)

    monkeypatch.setattr(os, "fsync", killed)
    res = check_case(Case("signal", [*APPLY, OUT], 128 + signum), ws)
    assert f"stopped by {signal.Signals(signum).name}" in res.stderr
    assert signal.getsignal(signum) is before


@pytest.mark.parametrize(
    ("err", "said"),
    [(errno.ENOSPC, "No space left on device"), (errno.EROFS, "Read-only file system"),
     (errno.EDQUOT, "Disk quota exceeded")],
)  # fmt: skip
def test_os_refusals_on_the_output_are_one_line(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch, err: int, said: str
) -> None:
    """Item 13: the OS refusing the output (full disk, read-only, quota, no inodes) is one
    line naming the output, exit 1, nothing left behind."""
    replace = os.replace

    def refused(src: str, dst: str) -> None:
        if str(dst).endswith("out.safetensors"):
            raise OSError(err, os.strerror(err))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", refused)
    res = check_case(Case("os-refusal", [*APPLY, OUT], 1), ws)
    assert f"out.safetensors: cannot be written: {said}" in res.stderr


def test_file_size_limit_is_one_line(ws: Workspace) -> None:
    """Item 13: ``ulimit -f`` (EFBIG; Python ignores SIGXFSZ) in a real process."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))

    args = ["apply", ws.paths["base"], ws.paths["patch"], "-o", str(ws.tmp / "out.safetensors")]
    res = subprocess.run([sys.executable, "-m", "rws", *args], capture_output=True, text=True,
                         preexec_fn=limit, timeout=120, check=False)  # fmt: skip
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "File too large" in lines[0] and "out.safetensors" in lines[0]
    assert sorted(os.listdir(ws.tmp)) == ["base.safetensors", "patch.rws.safetensors", "sharded",
                                          "tuned.safetensors"]  # fmt: skip


def test_warnings_never_precede_the_error_line(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 13: a warning raised before an error is not printed ahead of it."""
    import warnings

    import rws.cli.patch as patch_cli
    from rws.errors import CheckpointError

    def warn_then_fail(path: str) -> dict:
        warnings.warn("TypedStorage is deprecated", UserWarning, stacklevel=1)
        raise CheckpointError(path, "broken")

    monkeypatch.setattr(patch_cli, "describe", warn_then_fail)
    res = invoke("inspect", ws.paths["base"])
    assert res.exit_code == 3 and res.stderr.splitlines()[0].startswith("error: ")
    assert "TypedStorage" not in res.stderr


def test_inspect_json_of_many_empty_tensors_is_plain_and_linear(ws: Workspace) -> None:
    """Item 17: a header of 5,000 empty tensors gives its JSON (not rich-rendered) quickly."""
    entries = {f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(5000)}
    path = ws.write("empty.safetensors", safetensors_bytes(entries))
    res = invoke("inspect", path, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["tensors_total"] == 5000
