"""Fetching a run's repository, end to end through `runner serve` over real HTTP: signed GitHub
pull_request deliveries whose clone URL is git over smart HTTP (tests/gitserver.py), GitHub the
fake of tests/fake_github.py. A mirror a killed process left half-made is made again; a clone
URL answering 404 fails the run at once; a server answering 500 or refusing connections makes
the run wait, visibly (`wait` in `runner show` and the API), until it comes back or the fetch
deadline passes; a spent GitHub rate limit stops every call until its reset; what a killed node
left is swept when the next one starts."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fake_github import FakeGitHub, fake_github
from tests.gitserver import GitServer, git_server
from tests.source.test_reconciler import git
from tests.test_e2e_forge import SECRET, deliver, statuses
from tests.test_serve import AGENT, ECHO, free_port, runner, wait_for

REPO = "acme/app"
CONTEXT = "runner/build"
TOKEN = "viewer-t0ken-ffffffff"
NUMBERS = itertools.count(1)
WORKFLOW = """\
apiVersion: runner/v1
kind: Workflow
metadata: {name: build}
spec:
  triggers: [{pull_request: {types: [opened, synchronize]}}]
  steps: [{id: hi, agent: hello}]
"""


@dataclass
class Service:
    base: str
    home: Path
    log: Path
    process: subprocess.Popen[str]

    def run(self, run_id: int) -> dict[str, Any]:
        """The run as the REST API shows it."""
        answer = httpx.get(
            f"{self.base}/api/runs/{run_id}", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert answer.status_code == 200, answer.text
        found: dict[str, Any] = answer.json()
        return found

    def show(self, run_id: int) -> dict[str, Any]:
        """The run as `runner show -o json` prints it."""
        done = runner(self.home, "show", str(run_id), "-o", "json")
        assert done.returncode == 0, done.stderr
        found: dict[str, Any] = json.loads(done.stdout)
        return found

    def metrics(self) -> str:
        return httpx.get(f"{self.base}/metrics").text


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GitServer]:
    (tmp_path / "srv").mkdir()
    with git_server(tmp_path / "srv") as running:
        yield running


@pytest.fixture
def app(tmp_path: Path, server: GitServer) -> str:
    """The application repository, served as `app.git`; its head commit."""
    work = tmp_path / "app"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(tmp_path / "srv" / "app.git"))
    git(tmp_path, "init", "-q", "-b", "main", str(work))
    (work / "main.py").write_text("print('hi')\n")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "app")
    git(work, "push", "-q", str(tmp_path / "srv" / "app.git"), "main")
    return git(work, "rev-parse", "HEAD")


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    with fake_github() as fake:
        yield fake


@contextmanager
def serving(tmp_path: Path, github: FakeGitHub, *, deadline: str = "30m") -> Iterator[Service]:
    workflows = tmp_path / "workflows-repo"
    (workflows / "workflows").mkdir(parents=True, exist_ok=True)
    (workflows / "agents" / "hello").mkdir(parents=True, exist_ok=True)
    (workflows / "workflows" / "build.yaml").write_text(WORKFLOW)
    (workflows / "agents" / "hello" / "agent.yaml").write_text(AGENT)
    (workflows / "agents" / "hello" / "main.py").write_text(ECHO)
    port = free_port()
    home = tmp_path / "svc"
    home.mkdir(exist_ok=True)
    (home / "runner.yaml").write_text(
        f"listen: {{port: {port}}}\n"
        f"sources: [{{name: main, url: '{workflows}', interval: 1s}}]\n"
        f"executor: {{sandbox: false, fetch_deadline: {deadline}}}\n"
        "api: {tokens: [{name: viewer, role: viewer, token_env: T_VIEWER}]}\n"
        "forges:\n"
        f"  - {{name: github, kind: github, api_url: '{github.url}', token_env: GH_TOKEN,"
        " webhook_secret_env: GH_SECRET}\n"
    )
    log = home / "serve.log"
    with log.open("w") as errors:
        process = subprocess.Popen(
            [sys.executable, "-m", "runner", "serve"],
            cwd=home,
            env={**os.environ, "GH_SECRET": SECRET, "GH_TOKEN": "gh-t0ken", "T_VIEWER": TOKEN},
            stderr=errors,
            text=True,
        )
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready)
        yield Service(base=base, home=home, log=log, process=process)
    finally:
        process.send_signal(signal.SIGTERM)  # nothing when the test killed it
        process.wait(timeout=60)
        assert "gh-t0ken" not in log.read_text()


def open_pull(service: Service, github: FakeGitHub, sha: str, clone_url: str) -> None:
    number = next(NUMBERS)
    github.pulls[(REPO, number)] = {"head": {"sha": sha}, "user": {"login": "dev"}}
    opened = {
        "action": "opened",
        "number": number,
        "pull_request": {
            "number": number,
            "head": {"sha": sha, "ref": f"feature-{number}"},
            "base": {"ref": "main"},
            "user": {"login": "dev"},
        },
        "repository": {"full_name": REPO, "clone_url": clone_url},
        "sender": {"login": "dev"},
    }
    answer = deliver(service.base, "pull_request", f"pr-{number}", opened)
    assert answer.status_code == 202, answer.text


def mirror_of(home: Path, clone_url: str) -> Path:
    """Where the runner keeps the mirror of a clone URL (data_dir/clones)."""
    return (
        home / ".runner" / "clones" / (hashlib.sha256(clone_url.encode()).hexdigest()[:16] + ".git")
    )


def test_a_half_made_mirror_is_made_again_and_leftovers_are_swept_at_start(
    tmp_path: Path, server: GitServer, github: FakeGitHub, app: str
) -> None:
    url = server.url("app.git")
    home = tmp_path / "svc"
    mirror = mirror_of(home, url)
    # what a SIGKILL during the first fetch of an earlier runner left: an init cut short (its
    # config empty and still locked, no HEAD yet), which libgit2 calls "Repository not found"
    mirror.parent.mkdir(parents=True)
    git(tmp_path, "init", "-q", "--bare", str(mirror))
    (mirror / "config").write_text("")
    (mirror / "config.lock").write_text("")
    (mirror / "HEAD").unlink()
    data = home / ".runner"
    leftovers = [
        data / "clones" / f"{mirror.name}.partial-k1ll3d",  # a mirror being made
        data / "mirrors" / "main-0123456789ab.git.partial-k1ll3d",  # a source's mirror
        data / "workspaces" / "run-7.partial-k1ll3d",  # a workspace being made
        data / "workspaces" / "run-42",  # the workspace of a run that is not unfinished
    ]
    for folder in leftovers:
        folder.mkdir(parents=True)
        (folder / "file").write_text("left behind\n")

    with serving(tmp_path, github) as service:
        assert not any(folder.exists() for folder in leftovers)  # swept before serving
        open_pull(service, github, app, url)
        wait_for(lambda: statuses(github, CONTEXT)[-1:] == ["success"], timeout=60)
        run = service.show(1)
        assert (run["status"], run["wait"], run["error"]) == ("succeeded", None, None)
        assert 'runner_cache_repairs_total{kind="mirror"} 1.0' in service.metrics()
    text = service.log.read_text()
    assert f"the mirror of {url} at {mirror} cannot be used" in text
    assert "removing it and fetching it again" in text
    assert not (mirror / "config.lock").exists()
    assert "bare = true" in (mirror / "config").read_text()
    assert not list(mirror.parent.glob("*.partial-*"))


def test_a_runner_killed_while_it_fetches_a_new_repository_leaves_no_half_made_mirror(
    tmp_path: Path, server: GitServer, github: FakeGitHub, app: str
) -> None:
    url = server.url("app.git")
    data = tmp_path / "svc" / ".runner"
    mirror = mirror_of(tmp_path / "svc", url)
    server.set_hang(10)  # the first fetch stalls: the runner is killed in the middle of it
    with serving(tmp_path, github) as service:
        open_pull(service, github, app, url)
        wait_for(lambda: list(mirror.parent.glob("*.partial-*")), timeout=60)
        service.process.kill()
        service.process.wait(timeout=30)
    assert not mirror.exists()  # never a half-made mirror under the real name
    left = [*mirror.parent.glob("*.partial-*"), *data.glob("workspaces/run-*.partial-*")]
    assert left
    server.set_hang(0)
    with serving(tmp_path, github) as service:
        assert not any(folder.exists() for folder in left)  # swept at start
        open_pull(service, github, app, url)  # run 1 is the killed node's until its lease ends
        wait_for(lambda: service.run(2)["status"] == "succeeded", timeout=60)
    assert "bare = true" in (mirror / "config").read_text()


def test_a_clone_url_answering_404_fails_the_run_at_once_saying_why(
    tmp_path: Path, server: GitServer, github: FakeGitHub, app: str
) -> None:
    with serving(tmp_path, github) as service:
        open_pull(service, github, app, server.url("missing.git"))
        wait_for(lambda: statuses(github, CONTEXT)[-1:] == ["failure"], timeout=60)
        run = service.run(1)
        assert run["status"] == "failed"
        assert run["wait"] is None
        assert "404" in run["error"]
        assert "check the clone URL and the credentials" in run["error"]
        shown = service.show(1)
        assert (shown["status"], shown["wait"], shown["error"]) == ("failed", None, run["error"])
        text = runner(service.home, "show", "1").stdout
        assert "404" in text


def test_a_failing_server_makes_the_run_wait_visibly_until_it_is_back(
    tmp_path: Path, server: GitServer, github: FakeGitHub, app: str
) -> None:
    server.set_status(500)
    with serving(tmp_path, github) as service:
        open_pull(service, github, app, server.url("app.git"))
        wait_for(lambda: service.run(1)["wait"] is not None, timeout=60)
        first = service.run(1)
        wait = first["wait"]
        assert first["status"] == "queued"
        assert first["error"] is None
        assert wait["for"] == "fetch"
        assert "500" in wait["reason"]
        assert wait["next_attempt"] > wait["since"]
        assert service.show(1)["wait"]["for"] == "fetch"
        text = runner(service.home, "show", "1").stdout
        assert "waits for fetch since" in text
        assert "next attempt at" in text
        reported = len(github.statuses)
        assert statuses(github, CONTEXT)[-1] == "pending"
        assert "waits for fetch" in github.statuses[-1][2]["description"]
        # tried again later (backoff), still waiting since the first failure; the forge is not
        # told the same thing again
        wait_for(
            lambda: (service.run(1)["wait"] or {}).get("next_attempt") != wait["next_attempt"],
            timeout=60,
        )
        again = service.run(1)["wait"]
        assert again["since"] == wait["since"]
        assert again["next_attempt"] - wait["next_attempt"] >= 5
        assert len(github.statuses) == reported
        assert "runner_forge_reports_skipped_total" in service.metrics()

        server.set_status(0)
        wait_for(lambda: statuses(github, CONTEXT)[-1:] == ["success"], timeout=60)
        done = service.run(1)
        assert (done["status"], done["wait"], done["error"]) == ("succeeded", None, None)


def test_a_server_refusing_connections_fails_the_run_after_the_fetch_deadline(
    tmp_path: Path, server: GitServer, github: FakeGitHub, app: str
) -> None:
    url = f"http://127.0.0.1:{free_port()}/app.git"  # nobody listens there
    with serving(tmp_path, github, deadline="8s") as service:
        open_pull(service, github, app, url)
        wait_for(lambda: service.run(1)["wait"] is not None, timeout=60)
        wait = service.run(1)["wait"]
        assert wait["for"] == "fetch"
        assert "refused" in wait["reason"].lower()
        assert wait["next_attempt"] <= wait["since"] + 8
        wait_for(lambda: service.run(1)["status"] == "failed", timeout=60)
        run = service.run(1)
        assert run["wait"] is None
        assert "still failing after 8s (executor.fetch_deadline)" in run["error"]
        assert statuses(github, CONTEXT)[-1] == "failure"


def test_a_spent_github_rate_limit_stops_every_call_until_its_reset(
    tmp_path: Path, server: GitServer, github: FakeGitHub, app: str
) -> None:
    github.rate_remaining = 2
    github.rate_reset = time.time() + 3600
    with serving(tmp_path, github) as service:
        # one after the other: a call already sent when the budget runs out cannot be recalled
        open_pull(service, github, app, server.url("app.git"))
        wait_for(lambda: service.run(1)["status"] == "succeeded", timeout=60)
        open_pull(service, github, app, server.url("app.git"))
        wait_for(lambda: service.run(2)["status"] == "succeeded", timeout=60)
        assert github.over_limit == []  # nothing was sent once GitHub said none was left
        assert len(github.calls) == 2
        assert 'runner_forge_api_calls_held_total{forge="github"}' in service.metrics()
    assert "github rate limit spent: no API call until" in service.log.read_text()
