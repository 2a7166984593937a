"""The reconciler against a real git remote served over smart HTTP on 127.0.0.1."""

from __future__ import annotations

import subprocess
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from runner import metrics
from runner.errors import TransientError
from runner.model import StoredDocument
from runner.scheduler import Scheduler
from runner.source.git import GitSource, GitSourceConfig
from runner.source.reconciler import Reconciler
from runner.spec.compile import SourceFile, compile_files
from runner.spec.repo import builtin_agents, repo_files
from runner.store.base import Store, open_store
from tests.gitserver import GitServer, git_server

pytestmark = pytest.mark.anyio

NIGHTLY = """\
apiVersion: runner/v1
kind: Workflow
metadata: {{name: {name}}}
spec:
  triggers: [{{schedule: {{cron: "{cron}"}}}}]
  steps: [{{id: scan, agent: security-scanner}}]
"""


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


class Repo:
    def __init__(self, root: Path, server: GitServer) -> None:
        self.remote = root / "srv" / "workflows.git"
        self.work = root / "work"
        git(root, "init", "-q", "--bare", "-b", "main", str(self.remote))
        git(root, "init", "-q", "-b", "main", str(self.work))
        git(self.work, "remote", "add", "origin", str(self.remote))
        (self.work / "workflows").mkdir()
        self.url = server.url("workflows.git")

    def commit(
        self, files: dict[str, str | None], message: str = "change", *, force: bool = False
    ) -> str:
        for rel, text in files.items():
            path = self.work / rel
            if text is None:
                path.unlink()
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(textwrap.dedent(text))
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "-m", message)
        git(self.work, "push", "-q", *(["--force"] if force else []), "origin", "main")
        return git(self.work, "rev-parse", "HEAD")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GitServer]:
    (tmp_path / "srv").mkdir()
    with git_server(tmp_path / "srv") as running:
        yield running


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = open_store(f"sqlite:///{tmp_path}/runner.db")
    await opened.open()
    await opened.migrate()
    try:
        yield opened
    finally:
        await opened.close()


async def test_apply_refuse_fix_retire_force_push_and_outage(
    tmp_path: Path, server: GitServer, store: Store
) -> None:
    repo = Repo(tmp_path, server)
    first = repo.commit(
        {"workflows/nightly.yaml": NIGHTLY.format(name="nightly", cron="0 3 * * *")}
    )
    scheduler = Scheduler(store.request_run)
    source = GitSource(GitSourceConfig(name="main", url=repo.url), tmp_path / "data")
    reconciler = Reconciler(
        store, source, sync=lambda s, r, b, c: scheduler.sync(s, r, b, catch_up=c)
    )

    applied = await reconciler.reconcile()
    assert (applied.revision, applied.applied) == (first, True)
    assert [d.name for d in (await store.applied_documents("main"))[1]] == ["nightly"]
    assert list(scheduler.jobs) == ["main|nightly|0 3 * * *|UTC"]
    again = await reconciler.reconcile()
    assert (again.changed, again.applied) == (False, False)

    broken = repo.commit(
        {"workflows/broken.yaml": "apiVersion: runner/v1\nkind: Workflow\nmetadata: {name: Bad}\n"}
    )
    refused = await reconciler.reconcile()
    assert (refused.applied, refused.errors) == (False, 2)  # bad name, no spec
    status = await store.get_source_status("main")
    assert status is not None
    assert (status.applied_revision, status.attempted_revision) == (first, broken)
    ready = {c.type: c for c in status.conditions}
    assert (ready["Ready"].status, ready["Ready"].reason, ready["Stalled"].status) == (
        False,
        "Invalid",
        True,
    )
    assert any(e["path"] == "workflows/broken.yaml" and e["line"] == 3 for e in status.errors)
    assert list(scheduler.jobs) == ["main|nightly|0 3 * * *|UTC"]  # the old schedule still fires

    fixed = repo.commit(
        {
            "workflows/broken.yaml": None,
            "workflows/weekly.yaml": NIGHTLY.format(name="weekly", cron="0 4 * * 1"),
        }
    )
    assert (await reconciler.reconcile()).applied
    status = await store.get_source_status("main")
    assert status is not None
    assert (status.applied_revision, status.errors) == (fixed, ())
    assert sorted(scheduler.jobs) == ["main|nightly|0 3 * * *|UTC", "main|weekly|0 4 * * 1|UTC"]

    retired = repo.commit({"workflows/nightly.yaml": None})
    assert (await reconciler.reconcile()).applied
    assert [d.name for d in (await store.applied_documents("main"))[1]] == ["weekly"]
    assert list(scheduler.jobs) == ["main|weekly|0 4 * * 1|UTC"]
    assert (await store.revision_documents("main", first))[0].name == "nightly"  # pinned runs

    git(repo.work, "reset", "-q", "--hard", first)
    rewritten = repo.commit(
        {"workflows/other.yaml": NIGHTLY.format(name="other", cron="0 5 * * *")}, force=True
    )
    assert rewritten != retired
    result = await reconciler.reconcile()
    assert (result.revision, result.applied) == (rewritten, True)
    assert sorted(d.name for d in (await store.applied_documents("main"))[1]) == [
        "nightly",
        "other",
    ]

    server.set_down(True)
    with pytest.raises(TransientError, match="fetching"):
        await reconciler.reconcile()
    status = await store.get_source_status("main")
    assert status is not None
    ready = {c.type: c for c in status.conditions}["Ready"]
    assert (ready.status, ready.reason, status.applied_revision) == (
        False,
        "FetchFailed",
        rewritten,
    )
    server.set_down(False)
    assert (await reconciler.reconcile()).revision == rewritten
    assert {c.type: c for c in (await store.get_source_status("main")).conditions}["Ready"].status  # type: ignore[union-attr]


async def test_only_changed_files_are_parsed_again(
    tmp_path: Path, server: GitServer, store: Store
) -> None:
    repo = Repo(tmp_path, server)
    repo.commit(
        {f"workflows/w{i}.yaml": NIGHTLY.format(name=f"w{i}", cron="0 3 * * *") for i in range(20)}
    )
    source = GitSource(GitSourceConfig(name="main", url=repo.url), tmp_path / "data")
    reconciler = Reconciler(store, source)
    await reconciler.reconcile()
    read: list[str] = []
    original = source._source_file

    def spy(rel: str, role: str, agent_dir: str | None, key: str, read_it: bool) -> SourceFile:
        if read_it:
            read.append(rel)
        return original(rel, role, agent_dir, key, read_it)

    source._source_file = spy  # type: ignore[method-assign]
    repo.commit({"workflows/w7.yaml": NIGHTLY.format(name="w7", cron="0 6 * * *")})
    assert (await reconciler.reconcile()).applied
    assert read == ["workflows/w7.yaml"]


async def test_token_credentials_come_from_the_environment_and_stay_secret(
    tmp_path: Path, server: GitServer, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = Repo(tmp_path, server)
    repo.commit({"workflows/a.yaml": NIGHTLY.format(name="a", cron="0 3 * * *")})
    server.require_basic("x-access-token", "s3cret-token-42")
    config = GitSourceConfig(name="main", url=repo.url, credentials={"token_env": "GIT_TOKEN"})
    monkeypatch.setenv("GIT_TOKEN", "wrong")
    refused = Reconciler(store, GitSource(config, tmp_path / "data"))
    with pytest.raises(TransientError):
        await refused.reconcile()
    monkeypatch.setenv("GIT_TOKEN", "s3cret-token-42")
    source = GitSource(config, tmp_path / "data")
    assert (await Reconciler(store, source).reconcile()).applied
    status = await store.get_source_status("main")
    assert "s3cret-token-42" not in repr(status)
    assert "s3cret-token-42" not in (source.mirror_path / "config").read_text()


async def test_user_and_password_credentials(
    tmp_path: Path, server: GitServer, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = Repo(tmp_path, server)
    repo.commit({"workflows/a.yaml": NIGHTLY.format(name="a", cron="0 3 * * *")})
    server.require_basic("deploy-bot", "pa55-w0rd-77")
    config = GitSourceConfig(
        name="main",
        url=repo.url,
        credentials={"username_env": "GIT_USER", "password_env": "GIT_PASSWORD"},
    )
    monkeypatch.setenv("GIT_USER", "deploy-bot")
    monkeypatch.setenv("GIT_PASSWORD", "wrong")
    with pytest.raises(TransientError):
        await Reconciler(store, GitSource(config, tmp_path / "data")).reconcile()
    monkeypatch.setenv("GIT_PASSWORD", "pa55-w0rd-77")
    source = GitSource(config, tmp_path / "data")
    assert (await Reconciler(store, source).reconcile()).applied
    assert "pa55-w0rd-77" not in repr(await store.get_source_status("main"))
    assert "pa55-w0rd-77" not in (source.mirror_path / "config").read_text()


async def test_a_revision_applied_elsewhere_reaches_this_process_schedules(
    tmp_path: Path, server: GitServer, store: Store
) -> None:
    """`runner reconcile` (or another replica) applies a commit; the running service's own
    pass finds the branch unchanged against the store, and still syncs its scheduler."""
    repo = Repo(tmp_path, server)
    repo.commit({"workflows/a.yaml": NIGHTLY.format(name="a", cron="0 3 * * *")})
    scheduler = Scheduler(store.request_run)
    config = GitSourceConfig(name="main", url=repo.url)
    service = Reconciler(
        store,
        GitSource(config, tmp_path / "service"),
        sync=lambda s, r, b, c: scheduler.sync(s, r, b, catch_up=c),
    )
    await service.reconcile()
    assert list(scheduler.jobs) == ["main|a|0 3 * * *|UTC"]
    repo.commit({"workflows/b.yaml": NIGHTLY.format(name="b", cron="30 4 * * *")})
    elsewhere = await Reconciler(store, GitSource(config, tmp_path / "cli")).reconcile()
    assert elsewhere.applied
    again = await service.reconcile()
    assert not again.applied  # nothing new for the store
    assert sorted(scheduler.jobs) == ["main|a|0 3 * * *|UTC", "main|b|30 4 * * *|UTC"]


async def test_a_hung_remote_is_cut_off_at_the_deadline(
    tmp_path: Path, server: GitServer, store: Store
) -> None:
    repo = Repo(tmp_path, server)
    repo.commit({"workflows/a.yaml": NIGHTLY.format(name="a", cron="0 3 * * *")})
    server.set_hang(4)  # longer than the deadline; short enough for the test to end soon
    source = GitSource(GitSourceConfig(name="main", url=repo.url), tmp_path / "data")
    reconciler = Reconciler(store, source, fetch_deadline=1.0)
    with pytest.raises(TransientError, match="took longer than 1s"):
        await reconciler.reconcile()
    status = await store.get_source_status("main")
    assert status is not None
    assert {c.type: c.reason for c in status.conditions}["Ready"] == "FetchFailed"


async def test_a_half_made_source_mirror_is_made_again(
    tmp_path: Path, server: GitServer, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    repo = Repo(tmp_path, server)
    repo.commit({"workflows/a.yaml": NIGHTLY.format(name="a", cron="0 3 * * *")})
    source = GitSource(GitSourceConfig(name="main", url=repo.url), tmp_path / "data")
    # what a process killed while it made the mirror left: an init cut short (an empty,
    # locked config and no HEAD yet), which libgit2 calls "Repository not found"
    git(tmp_path, "init", "-q", "--bare", str(source.mirror_path))
    (source.mirror_path / "config").write_text("")
    (source.mirror_path / "config.lock").write_text("")
    (source.mirror_path / "HEAD").unlink()
    before = metrics.CACHE_REPAIRS.labels("source")._value.get()
    result = await Reconciler(store, source).reconcile()
    assert result.applied
    assert metrics.CACHE_REPAIRS.labels("source")._value.get() == before + 1
    assert "the mirror of source main" in caplog.text
    assert "removing it and fetching again" in caplog.text
    assert not (source.mirror_path / "config.lock").exists()
    assert not list(source.mirror_path.parent.glob("*.partial-*"))
    # a lock a killed fetch left inside a mirror that opens: the fetch fails for a reason
    # that is not the remote's, and the mirror is made again
    repo.commit({"workflows/b.yaml": NIGHTLY.format(name="b", cron="0 4 * * *")})
    (source.mirror_path / "refs" / "remotes" / "origin").mkdir(parents=True, exist_ok=True)
    (source.mirror_path / "refs" / "remotes" / "origin" / "main.lock").write_text("")
    restarted = GitSource(source.config, tmp_path / "data")
    assert (await Reconciler(store, restarted).reconcile()).applied
    assert metrics.CACHE_REPAIRS.labels("source")._value.get() == before + 2


LINT = """\
apiVersion: runner/v1
kind: Agent
metadata: {{name: lint}}
spec:
  command: [python, main.py]
  timeout: {timeout}
"""

USES_LINT = """\
apiVersion: runner/v1
kind: Workflow
metadata: {{name: {name}}}
spec:
  triggers: [{{manual: {{}}}}]
  steps: [{{id: lint, agent: lint}}]
"""


def stored_names(docs: list[StoredDocument]) -> list[tuple[str, str, str, str]]:
    return sorted((d.kind, d.name, d.digest, d.path) for d in docs)


def expected_documents(work: Path) -> list[tuple[str, str, str, str]]:
    result = compile_files(repo_files(work, ""), builtins=builtin_agents())
    assert result.errors == []
    return stored_names(result.documents)


async def test_a_one_file_change_is_checked_against_the_whole_revision(
    tmp_path: Path, server: GitServer, store: Store
) -> None:
    repo = Repo(tmp_path, server)
    first = repo.commit(
        {
            "agents/lint/agent.yaml": LINT.format(timeout="1m"),
            "workflows/a.yaml": USES_LINT.format(name="a"),
            "workflows/b.yaml": NIGHTLY.format(name="build", cron="0 3 * * *"),
            "workflows/d.yaml": USES_LINT.format(name="d"),
        }
    )
    source = GitSource(GitSourceConfig(name="main", url=repo.url), tmp_path / "data")
    reconciler = Reconciler(store, source)
    assert (await reconciler.reconcile()).applied
    applied = {first: expected_documents(repo.work)}

    async def refused_with(errors: list[str]) -> None:
        result = await reconciler.reconcile()
        assert (result.applied, result.errors) == (False, len(errors))
        status = await store.get_source_status("main")
        assert status is not None
        assert status.applied_revision == first  # the last good revision stays applied
        found = [f"{e['path']}:{e['line']}:{e['column']}: {e['message']}" for e in status.errors]
        assert found == errors

    # a new file takes the name of an unchanged one
    repo.commit({"workflows/c.yaml": NIGHTLY.format(name="build", cron="0 4 * * *")})
    await refused_with(
        [
            "workflows/c.yaml:3:18: workflow 'build' is already defined in workflows/b.yaml:3; "
            "names are unique per kind"
        ]
    )
    # that one fixed, but an agent two unchanged workflows use is deleted
    repo.commit({"workflows/c.yaml": None, "agents/lint/agent.yaml": None})
    unknown = "unknown agent 'lint'; an agent is built in or lives in agents/<name>/agent.yaml"
    await refused_with([f"workflows/a.yaml:6:29: {unknown}", f"workflows/d.yaml:6:29: {unknown}"])
    # the agent back, but broken: its own error, and its users are not called unknown
    repo.commit({"agents/lint/agent.yaml": LINT.format(timeout="0s")})
    await refused_with(["agents/lint/agent.yaml:6:12: a timeout must be longer than 0s"])

    fixed = repo.commit({"agents/lint/agent.yaml": LINT.format(timeout="2m")})
    assert (await reconciler.reconcile()).applied
    applied[fixed] = expected_documents(repo.work)
    renamed = repo.commit(
        {
            "workflows/b.yaml": None,
            "workflows/e.yaml": NIGHTLY.format(name="build", cron="5 * * * *"),
        }
    )
    assert (await reconciler.reconcile()).applied
    applied[renamed] = expected_documents(repo.work)
    assert (await store.get_source_status("main")).errors == ()  # type: ignore[union-attr]

    # after a restart: a fresh reconciler writes the next revision in full, and it is right
    restarted = Reconciler(store, GitSource(source.config, tmp_path / "data2"))
    last = repo.commit({"workflows/a.yaml": None})
    assert (await restarted.reconcile()).applied
    applied[last] = expected_documents(repo.work)
    for revision, documents in applied.items():  # every applied revision reads back whole
        assert stored_names(await store.revision_documents("main", revision)) == documents
