"""Per-run workspaces: the trigger's repository checked out at its sha (pygit2), one folder per
run, removed when the run ends (kept after a failure when configured)."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pygit2

from runner.errors import PermanentError

log = logging.getLogger(__name__)


def head_of(path: Path) -> tuple[str, str]:
    """(sha, ref) of the checked-out HEAD of the git repository at `path`."""
    found = pygit2.discover_repository(str(path))
    if found is None:
        raise PermanentError(f"{path} is not a git repository: give --workspace a git checkout")
    repo = pygit2.Repository(found)
    if repo.head_is_unborn:
        raise PermanentError(f"{path} has no commits yet: commit something to run on")
    return str(repo.head.target), repo.head.name


def _checkout(clone_url: str, sha: str, dest: Path) -> None:
    repo = pygit2.clone_repository(clone_url, str(dest))
    try:
        commit = repo.revparse_single(sha).peel(pygit2.Commit)
    except (KeyError, ValueError) as exc:
        raise PermanentError(f"commit {sha} is not in {clone_url}") from exc
    repo.checkout_tree(commit, strategy=pygit2.enums.CheckoutStrategy.FORCE)  # type: ignore[no-untyped-call]
    repo.set_head(commit.id)


class Workspaces:
    def __init__(self, root: Path, *, keep_failed: bool = False) -> None:
        self.root = root.absolute()  # agents (and their sandbox) need absolute paths
        self.keep_failed = keep_failed

    def path(self, run_id: int) -> Path:
        return self.root / f"run-{run_id}"

    async def prepare(self, run_id: int, trigger: Mapping[str, Any]) -> Path:
        """The run's workspace, created on first use (again after a restart if it is gone)."""
        path = self.path(run_id)
        if path.is_dir():
            return path
        self.root.mkdir(parents=True, exist_ok=True)
        clone_url, sha = trigger.get("clone_url"), trigger.get("sha")
        if clone_url and sha:
            partial = path.with_name(path.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            await asyncio.to_thread(_checkout, str(clone_url), str(sha), partial)
            partial.rename(path)
        else:
            path.mkdir()
        return path

    async def release(self, run_id: int, *, failed: bool) -> None:
        path = self.path(run_id)
        if failed and self.keep_failed:
            log.info("kept the workspace of failed run %d at %s", run_id, path)
            return
        await asyncio.to_thread(shutil.rmtree, path, True)
