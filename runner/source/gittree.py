"""Reading a workflows repo as it is at a git revision (pygit2), without a checkout."""

from __future__ import annotations

from pathlib import Path

import pygit2

from runner.errors import UsageError
from runner.spec.compile import SourceFile
from runner.spec.repo import repo_layout


def _walk(repo: pygit2.Repository, tree: pygit2.Tree, prefix: str = "") -> dict[str, pygit2.Oid]:
    out: dict[str, pygit2.Oid] = {}
    for entry in tree:
        path = f"{prefix}{entry.name}"
        if entry.type_str == "tree":
            subtree = repo[entry.id]
            assert isinstance(subtree, pygit2.Tree)
            out.update(_walk(repo, subtree, path + "/"))
        elif entry.type_str == "blob":
            out[path] = entry.id
    return out


def subtree(repo: pygit2.Repository, commit: pygit2.Commit, relative: str) -> pygit2.Tree | None:
    """The tree of folder `relative` at `commit` (its root for "" or "."); None if absent."""
    if relative in ("", "."):
        return commit.tree
    try:
        entry = commit.tree[relative]
    except KeyError:
        return None
    found = repo[entry.id]
    return found if isinstance(found, pygit2.Tree) else None


def document_ids(repo: pygit2.Repository, tree: pygit2.Tree | None) -> dict[str, pygit2.Oid]:
    """The blob ids of the workflow and agent files of a workflows-repo tree, by path."""
    if tree is None:
        return {}
    blobs = _walk(repo, tree)
    return {rel: blobs[rel] for rel, _role, _dir in repo_layout(blobs)}


def program_ids(
    repo: pygit2.Repository, tree: pygit2.Tree | None
) -> dict[str, dict[str, pygit2.Oid]]:
    """By repo-local agent name, the blob ids of the files of its folder beside agent.yaml:
    its program, which runs with whatever the agent is granted."""
    if tree is None:
        return {}
    blobs = _walk(repo, tree)
    out: dict[str, dict[str, pygit2.Oid]] = {}
    for rel, role, agent_dir in repo_layout(blobs):
        if role == "agent" and agent_dir is not None:
            folder = agent_dir + "/"
            out[agent_dir.rsplit("/", 1)[-1]] = {
                path: oid for path, oid in blobs.items() if path.startswith(folder) and path != rel
            }
    return out


def tree_files(repo: pygit2.Repository, tree: pygit2.Tree, display: str) -> list[SourceFile]:
    """The workflow and agent documents of a workflows-repo tree; `display` prefixes their
    paths in errors."""
    blobs = _walk(repo, tree)
    files = []
    for rel, role, agent_dir in repo_layout(blobs):
        blob = repo[blobs[rel]]
        assert isinstance(blob, pygit2.Blob)
        files.append(
            SourceFile(
                path=f"{display}{rel}",
                data=blob.data,
                role="workflows" if role == "workflows" else "agent",
                agent_dir=agent_dir,
            )
        )
    return files


def files_at(path: Path, rev: str) -> list[SourceFile]:
    """The documents of the workflows repo at `path` as of `rev` of its enclosing git repo.

    A folder that did not exist at `rev` has no documents (everything in it is new).
    """
    found = pygit2.discover_repository(str(path.resolve()))
    if found is None:
        raise UsageError(
            f"{path} is not inside a git repository, so there is no {rev} to plan against"
        )
    repo = pygit2.Repository(found)
    try:
        commit = repo.revparse_single(rev).peel(pygit2.Commit)
    except (KeyError, ValueError, pygit2.GitError):
        raise UsageError(f"unknown git revision {rev!r} in {repo.workdir or found}") from None
    workdir = Path(repo.workdir or found).resolve()
    relative = path.resolve().relative_to(workdir).as_posix()
    tree = subtree(repo, commit, relative)
    if tree is None:
        return []
    prefix = relative + "/" if relative not in ("", ".") else ""
    return tree_files(repo, tree, f"{rev}:{prefix}")
