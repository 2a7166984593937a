"""Per-run workspaces: the trigger's repository checked out at its sha (pygit2), one folder per
run, removed when the run ends (kept after a failure when configured). Repositories are fetched
into a mirror per clone URL next to the workspaces (`clones/`), and a workspace borrows the
mirror's objects, so starting a run costs writing its files, not cloning the history."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import shutil
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pygit2

from runner import metrics
from runner.errors import PermanentError, TransientError
from runner.model import FINISHED
from runner.source.git import _in_daemon_thread, fetch_verdict, redact
from runner.store.base import Store

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


_locks: dict[str, threading.Lock] = {}
PARTIAL = ".partial-"  # what a folder being made is called until it is renamed into place
FETCH_DEADLINE = 120.0
# libgit2's own network timeouts (milliseconds): a fetch given up at its deadline still ends,
# and frees its mirror, when the remote stops answering
pygit2.option(pygit2.enums.Option.SET_SERVER_CONNECT_TIMEOUT, 30_000)
pygit2.option(pygit2.enums.Option.SET_SERVER_TIMEOUT, int(FETCH_DEADLINE * 1000))


class WorkspaceUnavailable(TransientError):
    """The run's repository cannot be fetched right now; the run waits and tries again."""


def _has(repo: pygit2.Repository, sha: str) -> bool:
    try:
        return repo.get(sha) is not None
    except ValueError:
        return False


class _Repaired(Exception):
    """The mirror could not be used as a repository (left half-made by a crash, damaged)."""


def _fetch(repo: pygit2.Repository, clone_url: str, sha: str) -> None:
    remote = repo.remotes.create_anonymous(clone_url)
    remote.fetch(["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"])
    if not _has(repo, sha):
        with contextlib.suppress(pygit2.GitError):  # servers may refuse a bare sha
            remote.fetch([sha])


def _refused(clone_url: str, exc: pygit2.GitError) -> Exception:
    """The run's error for a fetch the remote refused: permanent (not found, not authorized:
    trying again changes nothing) or transient (the remote or the network is down)."""
    if fetch_verdict(str(exc)) == "permanent":
        return PermanentError(
            f"cannot fetch {redact(clone_url)}: {exc} (the repository is not there or this"
            " runner may not read it: check the clone URL and the credentials)"
        )
    return WorkspaceUnavailable(f"fetching {redact(clone_url)}: {exc}")


def _made(cache: Path, path: Path, clone_url: str, sha: str) -> pygit2.Repository:
    """A new mirror: fetched under a temporary name and renamed into place, so that a process
    killed meanwhile leaves only a `*.partial-*` folder (swept at start), never a half-made
    mirror under the real name."""
    cache.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"{path.name}{PARTIAL}", dir=cache))
    try:
        _fetch(pygit2.init_repository(str(partial), bare=True), clone_url, sha)
        if path.exists():  # what a repair could not remove in one go
            shutil.rmtree(path)
        partial.rename(path)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return pygit2.Repository(str(path))


def _repair(path: Path, clone_url: str, problem: object) -> None:
    log.warning(
        "the mirror of %s at %s cannot be used (%s): removing it and fetching it again",
        redact(clone_url),
        path,
        problem,
    )
    metrics.cache_repaired("mirror")
    shutil.rmtree(path, ignore_errors=True)


def _mirror(cache: Path, clone_url: str, sha: str) -> pygit2.Repository:
    """A bare mirror of `clone_url` under `cache` that holds `sha`: fetched only when it does
    not yet (branches and tags, then the commit itself for heads no branch names, like a pull
    request from a fork). A mirror that cannot be opened, or fetched into for a reason that
    is not the remote's, is removed and made again, once per call."""
    path = cache / (hashlib.sha256(clone_url.encode()).hexdigest()[:16] + ".git")
    lock = _locks.setdefault(str(path), threading.Lock())
    if not lock.acquire(timeout=FETCH_DEADLINE):  # another fetch of it hangs
        raise WorkspaceUnavailable(f"{redact(clone_url)} is still being fetched by another run")
    try:
        repo: pygit2.Repository | None = None
        if path.exists():
            try:
                repo = pygit2.Repository(str(path))
                if not repo.is_bare:  # what an interrupted init leaves (an empty config)
                    raise _Repaired("it is not a bare repository")
            except (pygit2.GitError, _Repaired) as exc:
                _repair(path, clone_url, exc)
                repo = None
        if repo is not None:
            if _has(repo, sha):
                return repo
            try:
                _fetch(repo, clone_url, sha)
                return repo
            except pygit2.GitError as exc:
                if fetch_verdict(str(exc)) is not None:  # the remote's answer, not the mirror
                    raise _refused(clone_url, exc) from exc
                _repair(path, clone_url, exc)
        try:
            return _made(cache, path, clone_url, sha)
        except pygit2.GitError as exc:
            raise _refused(clone_url, exc) from exc
    finally:
        lock.release()


def _checkout(clone_url: str, sha: str, dest: Path, cache: Path) -> str:
    """`dest` becomes a checkout of `sha` whose objects live in the mirror (git alternates):
    only the files are written, never a copy of the history. `origin` is `clone_url`. Returns
    the mirror's object folder."""
    mirror = _mirror(cache, clone_url, sha)
    if not _has(mirror, sha):
        raise PermanentError(f"commit {sha} is not in {clone_url}")
    pygit2.init_repository(str(dest))
    alternates = dest / ".git" / "objects" / "info" / "alternates"
    alternates.write_text(str(Path(mirror.path).resolve() / "objects") + "\n")
    repo = pygit2.Repository(str(dest))
    repo.remotes.create("origin", clone_url)
    commit = repo.revparse_single(sha).peel(pygit2.Commit)
    repo.checkout_tree(commit, strategy=pygit2.enums.CheckoutStrategy.FORCE)  # type: ignore[no-untyped-call]
    repo.set_head(commit.id)
    return str(Path(mirror.path).resolve() / "objects")


def _record(workspace: Path) -> Path:
    """Where the mirror a workspace borrows is written down: next to it, outside it."""
    return workspace.with_name(workspace.name + ".mirror")


def borrowed_objects(workspace: Path) -> list[str]:
    """The mirror object folder a run workspace borrows, for executors to make visible
    read-only: the one recorded when the workspace was made, outside it. The workspace's own
    alternates file is never trusted: a step may write it (and name another repository's
    mirror, or any host path)."""
    record = _record(workspace)
    if not record.is_file():
        return []
    mirrors = (workspace.parent.parent / "clones").resolve()
    path = Path(record.read_text(encoding="utf-8").strip()).resolve()
    if path.parent.parent == mirrors and path.name == "objects" and path.is_dir():
        return [str(path)]
    return []


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
            # each attempt its own folder: one given up at its deadline may still be writing
            partial = Path(tempfile.mkdtemp(prefix=f"{path.name}{PARTIAL}", dir=self.root))
            cache = self.root.parent / "clones"

            def checkout() -> str:
                return _checkout(str(clone_url), str(sha), partial, cache)

            try:  # libgit2 has no overall deadline: a hung remote must not hold the run
                objects = await asyncio.wait_for(_in_daemon_thread(checkout), FETCH_DEADLINE)
            except TimeoutError:
                raise WorkspaceUnavailable(
                    f"fetching {redact(str(clone_url))} took over {FETCH_DEADLINE:g}s"
                ) from None
            except (pygit2.GitError, OSError) as exc:  # a checkout that failed, a full disk
                shutil.rmtree(partial, ignore_errors=True)
                raise WorkspaceUnavailable(f"fetching {redact(str(clone_url))}: {exc}") from exc
            except (PermanentError, WorkspaceUnavailable):
                shutil.rmtree(partial, ignore_errors=True)
                raise
            _record(path).write_text(objects + "\n", encoding="utf-8")
            partial.rename(path)  # noqa: ASYNC240 - one local rename, done once per run
        else:
            path.mkdir()
        return path

    async def release(self, run_id: int, *, failed: bool) -> None:
        path = self.path(run_id)
        if failed and self.keep_failed:
            log.info("kept the workspace of failed run %d at %s", run_id, path)
            return
        await asyncio.to_thread(shutil.rmtree, path, True)
        _record(path).unlink(missing_ok=True)


def _leftovers(root: Path) -> tuple[list[Path], dict[int, Path]]:
    """(half-made folders, {run id: workspace}) under a data directory."""
    partial = [
        *root.glob(f"workspaces/run-*{PARTIAL}*"),
        *root.glob(f"clones/*.git{PARTIAL}*"),
        *root.glob(f"mirrors/*.git{PARTIAL}*"),
        *root.glob("checkouts/*/*.partial"),
    ]
    spaces = {
        int(path.name.removeprefix("run-")): path
        for path in root.glob("workspaces/run-*")
        if path.name.removeprefix("run-").isdigit() and path.is_dir()
    }
    return [p for p in partial if p.is_dir()], spaces


def _remove(paths: list[Path]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
        _record(path).unlink(missing_ok=True)
        log.info("removed %s at start (half-made, or its run is finished)", path)


async def sweep(data_dir: Path, store: Store, *, keep_failed: bool = False) -> list[Path]:
    """What a node removes when it starts (before its workers take up runs): folders a killed
    process left half-made (`*.partial-*` workspaces and mirrors, never renamed into place) and
    the workspaces of runs that are finished (kept for failed runs with `keep_failed`). The
    data directory is one node's own; returns what was removed, each logged."""
    found, spaces = await asyncio.to_thread(_leftovers, data_dir)
    for run_id, path in sorted(spaces.items()):
        run = await store.get_run(run_id)
        kept = keep_failed and run is not None and run.status != "succeeded"
        if (run is None or run.status in FINISHED) and not kept:
            found.append(path)
    await asyncio.to_thread(_remove, found)
    return found
