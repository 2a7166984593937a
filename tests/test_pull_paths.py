"""`paths` filters on `pull_request` triggers: the payload lists no files, so the dispatcher
asks the forge (GitHub's PR files, GitLab's MR diffs; fakes on 127.0.0.1) and starts only the
workflows whose filters match; when the forge cannot answer, the filters match."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.dispatch import Dispatcher
from runner.forges.api import ForgeClient
from runner.forges.github import GitHubClient
from runner.forges.gitlab import GitLabClient
from runner.model import Event
from runner.revisions import BundleLoader
from runner.spec.compile import SourceFile, compile_files
from runner.spec.repo import builtin_agents, repo_files
from runner.store.base import Store
from tests.fake_github import fake_github
from tests.fake_gitlab import fake_gitlab

pytestmark = pytest.mark.anyio
EXAMPLE = Path(__file__).parents[1] / "workflows-repo-example"
SRC_ONLY = b"""\
apiVersion: runner/v1
kind: Workflow
metadata: {name: src-only}
spec:
  triggers: [{pull_request: {paths: ["src/**"], paths_ignore: ["src/**/*.md"]}}]
  steps: [{id: scan, agent: security-scanner}]
"""


@pytest.fixture
async def store(example_store: Store) -> Store:
    files = [
        *repo_files(EXAMPLE, ""),
        SourceFile(path="workflows/src-only.yaml", data=SRC_ONLY, role="workflows"),
    ]
    result = compile_files(files, builtins=builtin_agents())
    assert result.errors == []
    await example_store.apply_revision("main", "rev2", result.documents)
    return example_store


def event(kind: str, number: int, body: dict[str, object]) -> Event:
    return Event(
        id=number,
        forge=kind,
        delivery_id=f"{kind}-{number}",
        event_type="pull_request" if kind == "github" else "Merge Request Hook",
        headers={},
        body=json.dumps(body).encode(),
        received_at=0.0,
    )


def github_pr(number: int) -> dict[str, object]:
    return {
        "action": "opened",
        "number": number,
        "pull_request": {"number": number, "head": {"sha": "f" * 40}, "base": {"ref": "main"}},
        "repository": {"full_name": "acme/app", "clone_url": "https://github.example/acme/app"},
        "sender": {"login": "dev"},
    }


async def started(store: Store, client: ForgeClient, kind: str, ev: Event) -> set[str]:
    dispatcher = Dispatcher(
        store,
        BundleLoader(store.revision_documents, builtin_agents()),
        kinds={kind: kind},
        sources={},
        clients={kind: client},
    )
    ids = await dispatcher.handle(ev)
    return {run.workflow for run in await store.list_runs() if run.id in ids}


async def test_github_pull_request_files_decide_path_filters(store: Store) -> None:
    with fake_github() as fake:
        for number, files in ((1, ["docs/guide.md"]), (2, ["src/shop/app.py", "README.md"])):
            fake.pulls[("acme/app", number)] = {"head": {"sha": "f" * 40}}
            fake.files[("acme/app", number)] = files
        fake.pulls[("acme/app", 3)] = {"head": {"sha": "f" * 40}}
        fake.files[("acme/app", 3)] = ["src/notes/readme.md"]
        client = GitHubClient(fake.url, "t0ken")
        try:
            docs = await started(store, client, "github", event("github", 1, github_pr(1)))
            code = await started(store, client, "github", event("github", 2, github_pr(2)))
            ignored = await started(store, client, "github", event("github", 3, github_pr(3)))
            unknown = await started(store, client, "github", event("github", 4, github_pr(4)))
        finally:
            await client.close()
    assert "pr-security-review" in docs  # no path filter: always
    assert "src-only" not in docs
    assert "src-only" in code
    assert "src-only" not in ignored  # paths_ignore wins
    assert "src-only" in unknown  # the forge had no answer (404): the filter matches
    assert ("GET", "/repos/acme/app/pulls/2/files") in fake.calls


async def test_gitlab_merge_request_diffs_decide_path_filters(store: Store) -> None:
    def mr(iid: int) -> dict[str, object]:
        return {
            "object_kind": "merge_request",
            "user": {"username": "dev"},
            "project": {
                "path_with_namespace": "acme/app",
                "git_http_url": "https://gitlab.example/acme/app.git",
            },
            "object_attributes": {
                "iid": iid,
                "action": "open",
                "target_branch": "main",
                "last_commit": {"id": "e" * 40},
            },
        }

    with fake_gitlab() as fake:
        for iid, diffs in ((5, [("docs/a.md", "docs/a.md")]), (6, [("lib/x.py", "src/x.py")])):
            fake.merge_requests[("acme/app", iid)] = {"iid": iid, "sha": "e" * 40}
            fake.diffs[("acme/app", iid)] = diffs
        client = GitLabClient(fake.api_url, fake.token)
        try:
            docs = await started(store, client, "gitlab", event("gitlab", 5, mr(5)))
            moved = await started(store, client, "gitlab", event("gitlab", 6, mr(6)))
        finally:
            await client.close()
    assert "src-only" not in docs
    assert "src-only" in moved  # a rename into src/ counts
