"""A workflows repository in git (pygit2): a bare mirror in the data directory, fetched with a
deadline, read without a checkout.

The remote is looked up again for every fetch (a kept `Remote` can report stale heads) and
libgit2 has no network timeout, so a fetch runs in a thread with a deadline around it: a hung
remote costs one stuck thread, never the loop. Credentials are read from the environment or a
file at fetch time and are never logged or stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pygit2

from runner import metrics
from runner.errors import PermanentError, TransientError
from runner.spec.compile import SourceFile
from runner.spec.repo import repo_layout

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class GitSourceConfig:
    name: str
    url: str
    branch: str = "main"
    path: str = "."
    interval: float = 60.0
    credentials: Mapping[str, str] = field(default_factory=dict)


def redact(url: str) -> str:
    return re.sub(r"//[^@/]*@", "//***@", url)


# What libgit2 says when the remote refused for good (not there, not allowed: trying again
# changes nothing) or for now (down, overloaded, unreachable); anything else may be the local
# mirror's trouble (a lock left by a crash, a damaged file).
_PERMANENT = re.compile(
    r"status code: (401|403|404|410)\b|authentication required|authentication replays"
    r"|repository not found|could not find repository|unsupported url protocol"
    r"|does not appear to be a git repository",
    re.IGNORECASE,
)
_TRANSIENT = re.compile(
    r"status code: (408|425|429|5\d\d)\b|failed to connect|connection (refused|reset|closed)"
    r"|timed out|timeout|failed to resolve|could not resolve|early eof|unexpected eof|ssl"
    r"|tls|failed to send request|failed to receive|network|broken pipe",
    re.IGNORECASE,
)


def fetch_verdict(message: str) -> str | None:
    """What a fetch's error says: `permanent` or `transient` when it is the remote's answer
    (or the network's), None when it may be the local mirror's fault."""
    if _PERMANENT.search(message):
        return "permanent"
    if _TRANSIENT.search(message):
        return "transient"
    return None


def _callbacks(config: GitSourceConfig) -> pygit2.RemoteCallbacks | None:
    creds = config.credentials
    if "token_env" in creds:
        token = os.environ.get(creds["token_env"], "")
        return pygit2.RemoteCallbacks(credentials=pygit2.UserPass("x-access-token", token))
    if "username_env" in creds:
        user = os.environ.get(creds["username_env"], "")
        password = os.environ.get(creds.get("password_env", ""), "")
        return pygit2.RemoteCallbacks(credentials=pygit2.UserPass(user, password))
    if "ssh_key_file" in creds:
        key = creds["ssh_key_file"]
        return pygit2.RemoteCallbacks(credentials=pygit2.Keypair("git", None, key, ""))
    return None


async def _in_daemon_thread(work: Callable[[], str]) -> str:
    """Run blocking `work` in a daemon thread: a fetch that hangs past its deadline is left
    behind without keeping the process from exiting (the default executor would wait for it)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[str] = loop.create_future()

    def deliver(result: str | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result or "")

    def target() -> None:
        try:
            outcome: tuple[str | None, BaseException | None] = (work(), None)
        except BaseException as exc:  # handed to the waiting coroutine
            outcome = (None, exc)
        with contextlib.suppress(RuntimeError):  # the loop may be gone by now
            loop.call_soon_threadsafe(deliver, *outcome)

    threading.Thread(target=target, name="git-fetch", daemon=True).start()
    return await future


class GitSource:
    """Fetches one branch of a remote into a bare mirror and reads trees from it."""

    def __init__(self, config: GitSourceConfig, data_dir: Path) -> None:
        self.config = config
        self.name = config.name
        self.interval = config.interval
        digest = hashlib.sha256(config.url.encode()).hexdigest()[:12]
        self.mirror_path = data_dir / "mirrors" / f"{config.name}-{digest}.git"
        self._repo: pygit2.Repository | None = None
        self._last: tuple[str, pygit2.Tree, dict[str, str]] | None = None

    @property
    def repo(self) -> pygit2.Repository:
        if self._repo is None:
            if self.mirror_path.exists():
                try:
                    repo = pygit2.Repository(str(self.mirror_path))
                    if not repo.is_bare:  # what an interrupted init leaves (an empty config)
                        raise pygit2.GitError("it is not a bare repository")
                    self._repo = repo
                except pygit2.GitError as exc:
                    self._repair(exc)
            if self._repo is None:
                self._repo = self._init()
        return self._repo

    def _init(self) -> pygit2.Repository:
        """An empty mirror, made under a temporary name and renamed into place: a process
        killed meanwhile leaves a `*.partial-*` folder (swept at start), never a half-made
        mirror under the real name."""
        parent = self.mirror_path.parent
        parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f"{self.mirror_path.name}.partial-", dir=parent))
        try:
            pygit2.init_repository(str(partial), bare=True)
            partial.rename(self.mirror_path)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        return pygit2.Repository(str(self.mirror_path))

    def _repair(self, problem: object) -> None:
        log.warning(
            "the mirror of source %s at %s cannot be used (%s): removing it and fetching again",
            self.name,
            self.mirror_path,
            problem,
        )
        metrics.cache_repaired("source")
        self._repo = None
        self._last = None
        shutil.rmtree(self.mirror_path, ignore_errors=True)

    def _url(self) -> str:
        url = self.config.url
        if "://" not in url and not re.match(r"^[\w.-]+@[\w.-]+:", url):
            return str(Path(url).resolve())  # a local path
        return url

    def _fetch(self) -> str:
        """The branch's head after a fetch; a mirror the fetch fails in for a reason that is
        not the remote's is removed and made again, once."""
        try:
            return self._fetch_once()
        except pygit2.GitError as exc:
            if fetch_verdict(str(exc)) is not None:
                raise
            self._repair(exc)
            return self._fetch_once()

    def _fetch_once(self) -> str:
        repo = self.repo
        ref = f"refs/remotes/origin/{self.config.branch}"
        if "origin" in [r.name for r in repo.remotes]:
            repo.remotes.set_url("origin", self._url())
        else:
            repo.remotes.create("origin", self._url(), "+refs/heads/*:refs/remotes/origin/*")
        remote = repo.remotes["origin"]  # looked up again for every fetch
        refspec = f"+refs/heads/{self.config.branch}:{ref}"
        remote.fetch(
            [refspec], callbacks=_callbacks(self.config), prune=pygit2.enums.FetchPrune.PRUNE
        )
        try:
            return str(repo.references[ref].target)
        except KeyError:
            raise PermanentError(
                f"branch {self.config.branch!r} does not exist in {redact(self.config.url)}"
            ) from None

    async def fetch(self, deadline: float = 60.0) -> str:
        """Fetch the branch; its head sha. Transient on network trouble or the deadline."""
        try:
            return await asyncio.wait_for(_in_daemon_thread(self._fetch), timeout=deadline)
        except TimeoutError:
            self._repo = None  # the stuck thread keeps its own handle; never share it
            self._last = None
            raise TransientError(
                f"fetching {redact(self.config.url)} took longer than {deadline:g}s"
            ) from None
        except pygit2.GitError as exc:
            raise TransientError(f"fetching {redact(self.config.url)} failed: {exc}") from None

    def listing(self, sha: str) -> dict[str, str]:
        """{path relative to the source's folder: blob id} of the documents at `sha`.

        After the first, a listing is the previous one patched with a tree-to-tree diff, so a
        one-file commit costs one entry, not a walk of the whole tree."""
        tree = self._folder(sha)
        if tree is None:
            return {}
        if self._last is not None and self._last[0] != sha:
            previous_tree, previous = self._last[1], self._last[2]
            blobs = dict(previous)
            for delta in previous_tree.diff_to_tree(tree).deltas:
                blobs.pop(delta.old_file.path, None)
                if delta.status_char() != "D":
                    blobs[delta.new_file.path] = str(delta.new_file.id)
        else:
            blobs = self._walk_documents(tree)
        self._last = (sha, tree, blobs)
        return {rel: blobs[rel] for rel, _, _ in repo_layout(blobs)}

    def _walk_documents(self, tree: pygit2.Tree) -> dict[str, str]:
        blobs: dict[str, str] = {}
        for top in ("workflows", "agents"):
            try:
                entry = tree[top]
            except KeyError:
                continue
            sub = self.repo[entry.id]
            if isinstance(sub, pygit2.Tree):
                self._walk(sub, f"{top}/", blobs)
        return blobs

    def _folder(self, sha: str) -> pygit2.Tree | None:
        tree = self.repo.revparse_single(sha).peel(pygit2.Commit).tree
        folder = self.config.path.strip("/")
        if folder in ("", "."):
            return tree
        try:
            sub = self.repo[tree[folder].id]
        except KeyError:
            return None
        return sub if isinstance(sub, pygit2.Tree) else None

    def _walk(self, tree: pygit2.Tree, prefix: str, out: dict[str, str]) -> None:
        for entry in tree:
            if entry.type_str == "tree":
                sub = self.repo[entry.id]
                assert isinstance(sub, pygit2.Tree)
                self._walk(sub, f"{prefix}{entry.name}/", out)
            elif entry.type_str == "blob":
                out[f"{prefix}{entry.name}"] = str(entry.id)

    def _source_file(
        self, rel: str, role: str, agent_dir: str | None, key: str, read: bool
    ) -> SourceFile:
        data = b""
        if read:
            blob = self.repo[key]
            assert isinstance(blob, pygit2.Blob)
            data = blob.data
        return SourceFile(
            path=rel,
            data=data,
            role="workflows" if role == "workflows" else "agent",
            agent_dir=agent_dir,
            key=key,
        )

    def _files(self, sha: str, known: Callable[[str, str], bool]) -> list[SourceFile]:
        listing = self.listing(sha)
        return [
            self._source_file(rel, role, agent_dir, listing[rel], not known(rel, listing[rel]))
            for rel, role, agent_dir in repo_layout(listing)
        ]

    async def files(self, revision: str, known: Callable[[str, str], bool]) -> list[SourceFile]:
        """The documents at `revision`; a file `known(path, blob id)` is listed but not read."""
        return await asyncio.to_thread(self._files, revision, known)

    def _changes(self, since: str, sha: str) -> tuple[list[SourceFile], list[str]] | None:
        try:
            old = self._folder(since)
        except (KeyError, ValueError, pygit2.GitError):
            return None  # not in the mirror (a rewritten history, a new mirror)
        new = self._folder(sha)
        if old is None or new is None:
            return None
        changed: dict[str, str] = {}
        gone: set[str] = set()
        for delta in old.diff_to_tree(new).deltas:
            gone.add(delta.old_file.path)
            if delta.status_char() != "D":
                changed[delta.new_file.path] = str(delta.new_file.id)
        files = [
            self._source_file(rel, role, agent_dir, changed[rel], True)
            for rel, role, agent_dir in repo_layout(changed)
        ]
        return files, [rel for rel, _, _ in repo_layout(gone - changed.keys())]

    async def changes(self, since: str, revision: str) -> tuple[list[SourceFile], list[str]] | None:
        """The documents that differ between the two revisions (a tree-to-tree diff: the cost
        is the change, not the tree), read, and the paths removed; None when `since` is not
        in the mirror."""
        return await asyncio.to_thread(self._changes, since, revision)

    def agents_root(self, revision: str) -> Path:
        """A folder holding `agents/` as of `revision` (repo-local agents' programs)."""
        return self.checkout_agents(
            revision, self.mirror_path.parent.parent / "checkouts" / self.config.name / revision
        )

    def checkout_agents(self, sha: str, dest: Path) -> Path:
        """The `agents/` folder of `sha` written under `dest` (repo-local agents' programs)."""
        if dest.exists():
            return dest
        partial = dest.with_name(dest.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)  # what a crashed earlier attempt left
        tree = self._folder(sha)
        if tree is not None:
            self._export(tree, partial, only="agents")
        else:
            partial.mkdir(parents=True)
        partial.mkdir(parents=True, exist_ok=True)
        partial.rename(dest)
        return dest

    def _export(self, tree: pygit2.Tree, dest: Path, only: str | None = None) -> None:
        for entry in tree:
            if only is not None and entry.name != only:
                continue
            target = dest / str(entry.name)
            obj: Any = self.repo[entry.id]
            # modes set whatever the runner's umask: a root runner's steps run as nobody
            if isinstance(obj, pygit2.Tree):
                target.mkdir(parents=True, exist_ok=True)
                target.chmod(0o755)
                self._export(obj, target)
            elif isinstance(obj, pygit2.Blob):
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(obj.data)
                executable = entry.filemode == pygit2.enums.FileMode.BLOB_EXECUTABLE
                target.chmod(0o755 if executable else 0o644)

    def rewritten(self, old: str, new: str) -> bool:
        """Whether `new` does not descend from `old` (a force-push or rewritten history)."""
        if old == new:
            return False
        try:
            return not self.repo.descendant_of(new, old)
        except (KeyError, ValueError, pygit2.GitError):
            return True
