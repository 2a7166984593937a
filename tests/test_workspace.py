"""Run workspaces: a checkout of the trigger's commit that borrows its objects from a mirror per
repository, usable by git itself (agents commit and push from it)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from runner.errors import PermanentError
from runner.model import RunRequest
from runner.store.base import open_store
from runner.workspace import Workspaces, borrowed_objects, sweep
from tests.source.test_reconciler import git

pytestmark = pytest.mark.anyio


def commit(work: Path, name: str, text: str) -> str:
    (work / name).write_text(text)
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", name)
    return git(work, "rev-parse", "HEAD")


async def test_checkouts_share_one_mirror_and_work_with_git(tmp_path: Path) -> None:
    app = tmp_path / "app"
    git(tmp_path, "init", "-q", "-b", "main", str(app))
    first = commit(app, "a.txt", "one\n")
    spaces = Workspaces(tmp_path / "data" / "workspaces")

    one = await spaces.prepare(1, {"clone_url": str(app), "sha": first})
    assert (one / "a.txt").read_text() == "one\n"
    assert git(one, "rev-parse", "HEAD") == first
    assert git(one, "remote", "get-url", "origin") == str(app)
    assert git(one, "status", "--porcelain") == ""  # a clean checkout, as git sees it
    assert not any((one / ".git" / "objects" / "pack").iterdir())  # history not copied

    second = commit(app, "b.txt", "two\n")  # the mirror fetches what it lacks
    git(app, "checkout", "-q", "-b", "side")
    side = commit(app, "c.txt", "side\n")
    git(app, "checkout", "-q", "main")
    two = await spaces.prepare(2, {"clone_url": str(app), "sha": second})
    three = await spaces.prepare(3, {"clone_url": str(app), "sha": side})
    assert sorted(p.name for p in two.iterdir() if p.name != ".git") == ["a.txt", "b.txt"]
    assert (three / "c.txt").is_file()
    assert len(list((tmp_path / "data" / "clones").iterdir())) == 1

    commit(two, "fix.txt", "agent change\n")  # what the patcher does
    git(two, "push", "-q", "origin", "HEAD:refs/heads/runner-fix")
    assert git(app, "log", "-1", "--format=%s", "runner-fix") == "fix.txt"

    await spaces.release(2, failed=False)
    assert not two.exists()
    assert (one / "a.txt").is_file()  # the others are untouched


async def test_an_unknown_commit_is_a_permanent_error(tmp_path: Path) -> None:
    app = tmp_path / "app"
    git(tmp_path, "init", "-q", "-b", "main", str(app))
    commit(app, "a.txt", "one\n")
    spaces = Workspaces(tmp_path / "ws")
    with pytest.raises(PermanentError, match="is not in"):
        await spaces.prepare(1, {"clone_url": str(app), "sha": "ab" * 20})
    assert subprocess.run(["ls", str(tmp_path / "ws")], capture_output=True).returncode == 0


async def test_only_the_runners_own_mirrors_are_ever_borrowed(tmp_path: Path) -> None:
    """A step may write the workspace's alternates file; executors mount only real mirrors."""
    app = tmp_path / "app"
    git(tmp_path, "init", "-q", "-b", "main", str(app))
    sha = commit(app, "a.txt", "one\n")
    spaces = Workspaces(tmp_path / "data" / "workspaces")
    space = await spaces.prepare(1, {"clone_url": str(app), "sha": sha})
    (mirror,) = borrowed_objects(space)
    assert mirror.startswith(str((tmp_path / "data" / "clones").resolve()))
    listing = space / ".git" / "objects" / "info" / "alternates"
    secret = tmp_path / "elsewhere"
    secret.mkdir()
    other = tmp_path / "private"  # another repository's mirror, whose name anyone can compute
    git(tmp_path, "init", "-q", "-b", "main", str(other))
    other_sha = commit(other, "p.txt", "private\n")
    (other_mirror,) = borrowed_objects(
        await spaces.prepare(2, {"clone_url": str(other), "sha": other_sha})
    )
    listing.write_text(f"/proc\n/etc\n{secret}\n{other_mirror}\n../../x\n")
    assert borrowed_objects(space) == [mirror]  # what was recorded, outside the workspace


async def test_a_hung_remote_is_given_up_at_the_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runner import workspace
    from tests.gitserver import git_server
    from tests.source.test_reconciler import Repo

    (tmp_path / "srv").mkdir()
    with git_server(tmp_path / "srv") as server:
        repo = Repo(tmp_path, server)
        sha = repo.commit({"workflows/a.yaml": "x: 1\n"})
        server.set_hang(30)
        monkeypatch.setattr(workspace, "FETCH_DEADLINE", 0.5)
        spaces = Workspaces(tmp_path / "data" / "workspaces")
        with pytest.raises(workspace.WorkspaceUnavailable, match=r"took over 0\.5s"):
            await spaces.prepare(1, {"clone_url": repo.url, "sha": sha})


async def test_the_sweep_at_start_keeps_what_unfinished_runs_and_kept_failures_need(
    tmp_path: Path,
) -> None:
    store = open_store(f"sqlite:///{tmp_path}/runner.db")
    await store.open()
    await store.migrate()
    try:
        runs = []
        for key in ("queued", "succeeded", "failed"):
            run, _ = await store.request_run(
                RunRequest(workflow="w", source="s", revision="r", idempotency_key=key)
            )
            if key != "queued":
                await store.transition_run(run.id, "running")
                await store.transition_run(run.id, key)  # type: ignore[arg-type]
            runs.append(run.id)
        data = tmp_path / "data"
        names = zip(("q", "s", "f"), runs, strict=True)
        spaces = {key: data / "workspaces" / f"run-{i}" for key, i in names}
        for path in spaces.values():
            path.mkdir(parents=True)
            path.with_name(path.name + ".mirror").write_text("x\n")
        removed = await sweep(data, store, keep_failed=True)
        assert removed == [spaces["s"]]
        assert not spaces["s"].with_name(spaces["s"].name + ".mirror").exists()
        assert spaces["q"].is_dir()
        assert spaces["f"].is_dir()
        assert await sweep(data, store) == [spaces["f"]]  # without keep_failed_workspaces
        assert spaces["q"].is_dir()
    finally:
        await store.close()
