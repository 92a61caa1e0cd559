"""A Hugging Face Hub on loopback for the tests: olah serves git repos, plus minimal write endpoints.

Reads: olah (PyPI ``olah``, a self-hosted Hub mirror), in offline mode, serves the git repos under
``ROOT/mirrors/models/ORG/NAME`` (``/resolve``, ``/api/models/…/revision``, ``/tree``) to the real
``huggingface_hub`` client. Writes: this module adds to olah's FastAPI app the endpoints the client
calls to push (``POST /api/repos/create``, ``/api/validate-yaml``,
``/api/models/ORG/NAME/{preupload,commit}/REV`` and ``/branch/BRANCH``); they commit into those
same git repos with git plumbing, so what a push writes is what olah then serves.

Simplifications, where a real Hub does more: preupload answers ``regular`` for every file, so the
client sends contents inline (base64) in the commit call; the Hub asks for LFS/Xet uploads of large
binary files, which ``hf_xet`` sends to a storage service not emulated here. Visibility is recorded
in ``.git/rws-hub.json`` but reads are not restricted. Only the bearer token ``TOKEN`` may write.

The test process uses :class:`HubServer`, which runs this file as a script:
``python tests/hub_server.py ROOT PORT``.
"""

import base64
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

TOKEN = "hf_rwsLoopbackWriteToken0123456789abcdef"
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "rws tests",
    "GIT_AUTHOR_EMAIL": "tests@rws.invalid",
    "GIT_COMMITTER_NAME": "rws tests",
    "GIT_COMMITTER_EMAIL": "tests@rws.invalid",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}
_FRONT = re.compile(r"\A---\n(.*?)\n---\n", re.S)


# --- git: shared by the server and the tests ----------------------------------------------------


def repo_path(root: Path, repo_id: str) -> Path:
    """Where olah looks for the model repo ``ORG/NAME``."""
    return root / "mirrors" / "models" / repo_id


def git(
    repo: Path, *args: str, data: bytes | None = None, env: dict[str, str] | None = None
) -> str:
    """Run git in ``repo``; its stdout, stripped."""
    res = subprocess.run(
        ["git", "-C", str(repo), *args], input=data, capture_output=True, check=True,
        env={**os.environ, **_GIT_ENV, **(env or {})},
    )  # fmt: skip
    return res.stdout.decode().strip()


def rev_parse(repo: Path, rev: str) -> str | None:
    """The object id ``rev`` names, or None."""
    try:
        return git(repo, "rev-parse", "--verify", "--quiet", rev) or None
    except subprocess.CalledProcessError:
        return None


def init_repo(path: Path) -> str:
    """A new repo whose ``main`` holds ``.gitattributes``, as the Hub creates them."""
    path.mkdir(parents=True)
    git(path, "init", "--quiet", "--initial-branch=main")
    return commit(path, "main", {".gitattributes": GITATTRIBUTES}, "initial commit")


def commit(
    repo: Path,
    branch: str,
    files: dict[str, bytes],
    message: str,
    *,
    deletes: tuple[str, ...] = (),
) -> str:
    """Commit ``files`` (path → bytes) onto ``branch`` (or a full ``refs/…`` name) without a
    working tree; the new commit id."""
    ref = branch if branch.startswith("refs/") else f"refs/heads/{branch}"
    parent = rev_parse(repo, ref)
    with tempfile.TemporaryDirectory() as tmp:
        env = {"GIT_INDEX_FILE": os.path.join(tmp, "index")}
        if parent:
            git(repo, "read-tree", parent, env=env)
        for path, data in files.items():
            blob = git(repo, "hash-object", "-w", "--stdin", data=data)
            git(repo, "update-index", "--add", "--cacheinfo", f"100644,{blob},{path}", env=env)
        for path in deletes:
            git(repo, "update-index", "--force-remove", path, env=env)
        tree = git(repo, "write-tree", env=env)
    sha = git(repo, "commit-tree", tree, *(["-p", parent] if parent else []), "-m", message)
    git(repo, "update-ref", ref, sha, parent or "0" * 40)
    return sha


# --- the write endpoints (run inside the server process) ----------------------------------------


def card_errors(content: str) -> list[str]:
    """What the Hub's metadata validation would reject in a README (front matter, model-index)."""
    import yaml

    m = _FRONT.match(content)
    if m is None:
        return []
    try:
        meta = yaml.safe_load(m.group(1))
    except yaml.YAMLError as e:
        return [f"invalid YAML: {e}"]
    if not isinstance(meta, dict):
        return ["metadata is not a mapping"]
    errors = []
    for model in meta.get("model-index") or []:
        if not isinstance(model.get("name"), str):
            errors.append("model-index entry without a name")
        for r in model.get("results") or []:
            if not r.get("task", {}).get("type"):
                errors.append("model-index result without task.type")
            if not (r.get("dataset", {}).get("type") and r.get("dataset", {}).get("name")):
                errors.append("model-index result without dataset.type and dataset.name")
            for metric in r.get("metrics") or []:
                if not metric.get("type") or not isinstance(metric.get("value"), int | float):
                    errors.append("model-index metric without type or numeric value")
    return errors


def write_router(root: Path, endpoint: str) -> Any:
    """The Hub's write endpoints as a FastAPI router committing into the repos olah serves."""
    from fastapi import APIRouter, Request
    from fastapi.responses import JSONResponse

    router = APIRouter()

    def error(status: int, message: str, code: str | None = None) -> JSONResponse:
        headers = {"X-Error-Message": message, **({"X-Error-Code": code} if code else {})}
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    def check(request: Request, org: str | None = None, name: str | None = None) -> Any:
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return error(401, "Invalid credentials in Authorization header")
        if org is not None and not repo_path(root, f"{org}/{name}").is_dir():
            return error(404, "Repository not found", "RepoNotFound")
        return None

    @router.post("/api/repos/create")
    async def create_repo(request: Request) -> Any:
        if (denied := check(request)) is not None:
            return denied
        body = await request.json()
        repo_id = f"{body.get('organization') or 'rws-tester'}/{body['name']}"
        url = f"{endpoint}/{repo_id}"
        path = repo_path(root, repo_id)
        if path.exists():
            return JSONResponse({"error": "You already created this model repo", "url": url}, 409)
        if body.get("type", "model") != "model":
            return error(400, "this test Hub holds model repos only")
        init_repo(path)
        (path / ".git" / "rws-hub.json").write_text(json.dumps(body))
        return {"url": url, "name": repo_id}

    @router.post("/api/validate-yaml")
    async def validate_yaml(request: Request) -> Any:
        errors = card_errors((await request.json())["content"])
        status = 400 if errors else 200
        body = {"errors": [{"message": e} for e in errors], "warnings": []}
        return JSONResponse(body, status_code=status)

    @router.post("/api/models/{org}/{name}/branch/{branch}")
    async def create_branch(org: str, name: str, branch: str, request: Request) -> Any:
        if (denied := check(request, org, name)) is not None:
            return denied
        path = repo_path(root, f"{org}/{name}")
        if rev_parse(path, f"refs/heads/{branch}"):
            return error(409, "Reference already exists")
        start = (await request.json() if await request.body() else {}).get("startingPoint")
        sha = rev_parse(path, f"{start or 'main'}^{{commit}}")
        if sha is None:
            return error(404, f"Invalid rev id: {start}", "RevisionNotFound")
        git(path, "update-ref", f"refs/heads/{branch}", sha, "0" * 40)
        return {}

    @router.post("/api/models/{org}/{name}/preupload/{revision}")
    async def preupload(org: str, name: str, revision: str, request: Request) -> Any:
        if (denied := check(request, org, name)) is not None:
            return denied
        path = repo_path(root, f"{org}/{name}")
        head = rev_parse(path, f"refs/heads/{revision}")
        if head is None:
            return error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        files = [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
             "oid": rev_parse(path, f"{head}:{f['path']}")}
            for f in (await request.json())["files"]
        ]  # fmt: skip
        return {"files": files, "commitOid": head}

    @router.post("/api/models/{org}/{name}/commit/{revision}")
    async def commit_route(org: str, name: str, revision: str, request: Request) -> Any:
        if (denied := check(request, org, name)) is not None:
            return denied
        path = repo_path(root, f"{org}/{name}")
        head = rev_parse(path, f"refs/heads/{revision}")
        if head is None:
            return error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        lines = [json.loads(x) for x in (await request.body()).splitlines() if x.strip()]
        if not lines or lines[0].get("key") != "header":
            return error(400, "the commit payload must start with a header line")
        header = lines[0]["value"]
        if header.get("parentCommit") not in (None, head):
            return error(412, "A commit has happened since. Please refresh and try again.")
        files: dict[str, bytes] = {}
        deletes: list[str] = []
        for item in lines[1:]:
            value = item["value"]
            if item["key"] == "file" and value.get("encoding") == "base64":
                files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "deletedFile":
                deletes.append(value["path"])
            else:
                return error(400, f"this test Hub does not take {item['key']!r} operations")
        message = header["summary"] + (
            f"\n\n{header['description']}" if header["description"] else ""
        )
        pr_url, target = None, revision
        if request.query_params.get("create_pr"):  # a pull request: refs/pr/N from the head
            number = len(git(path, "for-each-ref", "refs/pr/").splitlines()) + 1
            target = f"refs/pr/{number}"
            git(path, "update-ref", target, head, "0" * 40)
            pr_url = f"{endpoint}/{org}/{name}/discussions/{number}"
        sha = commit(path, target, files, message, deletes=tuple(deletes))
        return {"commitUrl": f"{endpoint}/{org}/{name}/commit/{sha}", "commitOid": sha,
                "success": True, "hookOutput": "", "pullRequestUrl": pr_url}  # fmt: skip

    return router


def serve(root: Path, port: int) -> None:
    """Run olah on 127.0.0.1:PORT (offline, serving ROOT/mirrors) with the write endpoints added."""
    netloc = f"127.0.0.1:{port}"
    config = root / "olah.toml"
    config.write_text(
        "[basic]\n"
        f'host = "127.0.0.1"\nport = {port}\n'
        f"repos-path = {json.dumps(str(root / 'olah-cache'))}\n"
        f"mirrors-path = [{json.dumps(str(root / 'mirrors'))}]\n"
        f'mirror-netloc = "{netloc}"\nmirror-lfs-netloc = "{netloc}"\n'
        "metadata-cache-ttl = 0\n"
        "[accessibility]\noffline = true\n"
    )
    (root / "mirrors" / "models").mkdir(parents=True, exist_ok=True)
    sys.argv = ["olah-cli", "-c", str(config), "--log-path", str(root / "olah-logs")]
    from olah import server

    args = server.init()
    server.app.include_router(write_router(root, f"http://{netloc}"))
    server.run_server(args)


# --- the test side ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HubServer:
    """olah plus the write endpoints, in a child process on a free loopback port."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> "HubServer":
        """Start the server and wait until it answers."""
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.root / "server.log", "wb")  # noqa: SIM115 (the child writes it)
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env.update(HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")  # olah: local repos only
        self._proc = subprocess.Popen(
            [sys.executable, __file__, str(self.root), str(self.port)],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"hub server exited:\n{self.log()[-3000:]}")
            try:  # any HTTP answer means it is up (olah answers "repo not found" here)
                with urllib.request.urlopen(f"{self.endpoint}/api/models/rws/up/revision/main"):
                    return self
            except urllib.error.HTTPError:
                return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"hub server did not answer in {timeout:.0f} s:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        """Stop the child process."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)

    def log(self) -> str:
        """The server's output so far."""
        path = self.root / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def create(self, repo_id: str, files: dict[str, bytes], branch: str = "main") -> str:
        """Make (or extend) a repo directly in git, as if pushed; the new commit id."""
        path = repo_path(self.root, repo_id)
        if not path.exists():
            init_repo(path)
        if branch != "main" and rev_parse(path, f"refs/heads/{branch}") is None:
            git(path, "update-ref", f"refs/heads/{branch}", "main", "0" * 40)
        return commit(path, branch, files, f"add {', '.join(files)}")

    def files(self, repo_id: str, rev: str = "main") -> dict[str, bytes]:
        """Every file of a repo at a revision, read from git."""
        path = repo_path(self.root, repo_id)
        names = git(path, "ls-tree", "-r", "--name-only", rev).splitlines()
        return {n: _blob(path, f"{rev}:{n}") for n in names}

    def created_with(self, repo_id: str) -> dict[str, Any]:
        """The ``/api/repos/create`` payload the repo was made with."""
        return json.loads((repo_path(self.root, repo_id) / ".git" / "rws-hub.json").read_text())


def _blob(repo: Path, spec: str) -> bytes:
    return subprocess.run(
        ["git", "-C", str(repo), "cat-file", "blob", spec], capture_output=True, check=True,
        env={**os.environ, **_GIT_ENV},
    ).stdout  # fmt: skip


if __name__ == "__main__":
    serve(Path(sys.argv[1]), int(sys.argv[2]))
