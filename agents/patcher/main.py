"""patcher: applies ruff's automatic fixes to the trigger's commit, on a new branch (pygit2).

It lints a clean copy of the trigger's commit (RUNNER_TRIGGER's `sha`; the workspace's HEAD
without one), never the workspace's files: what an earlier step of the run changed there is
neither linted nor committed, only what ruff fixed. Outputs the branch, the commit, the files
changed and the patch. Pushes the branch only when `push` is true and credentials are given
($GIT_PUSH_TOKEN), and only to the run's own repository (RUNNER_TRIGGER's `clone_url`), from a
repository of its own: the workspace's git configuration (remotes, URL rewrites, proxies),
which an earlier step may have rewritten, plays no part. Findings that no tool can fix (a
committed secret) are listed as left for a person.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pygit2

AUTHOR = pygit2.Signature("runner patcher", "runner@localhost")
FILES = (pygit2.enums.FileMode.BLOB, pygit2.enums.FileMode.BLOB_EXECUTABLE)
Files = dict[str, tuple[pygit2.Oid, pygit2.enums.FileMode]]  # path -> (blob id, mode)


def start(repo: pygit2.Repository, trigger: dict[str, Any]) -> pygit2.Commit:
    """The commit the run was triggered for: by its id, never by a name a step could move."""
    sha = str(trigger.get("sha") or "")
    if not sha:
        return repo.head.peel(pygit2.Commit)
    try:
        return repo[pygit2.Oid(hex=sha)].peel(pygit2.Commit)
    except (KeyError, ValueError, pygit2.GitError):
        raise SystemExit(f"the trigger's commit {sha} is not in the workspace") from None


def export(repo: pygit2.Repository, tree: pygit2.Tree, dest: Path, prefix: str = "") -> Files:
    """The regular files of `tree`, written under `dest`. Symlinks and submodules stay out (ruff
    would follow a link out of the copy)."""
    files: Files = {}
    for entry in tree:
        name = str(entry.name)
        if name in ("", ".", "..", ".git") or "/" in name:  # nothing lands outside `dest`
            continue
        if entry.filemode == pygit2.enums.FileMode.TREE:
            (dest / name).mkdir()
            files |= export(repo, repo[entry.id].peel(pygit2.Tree), dest / name, f"{prefix}{name}/")
        elif entry.filemode in FILES:
            (dest / name).write_bytes(repo[entry.id].peel(pygit2.Blob).data)
            files[f"{prefix}{name}"] = (entry.id, entry.filemode)
    return files


def isolated(workspace: Path) -> list[str]:
    """The repository's own ruff configuration, or none at all (never one from a parent folder)."""
    own = any((workspace / name).is_file() for name in ("ruff.toml", ".ruff.toml"))
    pyproject = workspace / "pyproject.toml"
    own = own or (pyproject.is_file() and "[tool.ruff" in pyproject.read_text(encoding="utf-8"))
    return [] if own else ["--isolated"]


def fix(copy: Path) -> str:
    done = subprocess.run(
        [
            sys.executable,
            "-I",  # ruff itself: never a ruff.py of the project in the working directory
            "-m",
            "ruff",
            "check",
            "--fix",
            "--exit-zero",
            "--no-cache",
            "--output-format",
            "concise",
            "--extend-select",
            "E,UP,SIM",
            *isolated(copy),
            ".",
        ],
        cwd=copy,
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip()


def fixed_tree(
    repo: pygit2.Repository, base: pygit2.Commit, copy: Path, files: Files
) -> tuple[pygit2.Oid, list[str]]:
    """The trigger's tree with the files ruff changed in `copy`, and those files' paths."""
    index = pygit2.Index()
    index.read_tree(base.tree)
    changed = []
    for path, (blob, mode) in sorted(files.items()):
        data = (copy / path).read_bytes()
        if pygit2.hash(data) != blob:
            index.add(pygit2.IndexEntry(path, repo.create_blob(data), mode))
            changed.append(path)
    return index.write_tree(repo), changed


def push(repo: pygit2.Repository, commit: pygit2.Oid, branch: str, url: str, token: str) -> str:
    """Push from a new repository that borrows the workspace's objects: its remotes and
    configuration are the patcher's, whatever the workspace's .git/config says."""
    with tempfile.TemporaryDirectory(prefix="patcher-push-") as scratch:
        pygit2.init_repository(scratch, bare=True)
        alternates = Path(scratch) / "objects" / "info" / "alternates"
        alternates.write_text(str(Path(repo.path) / "objects") + "\n", encoding="utf-8")
        clean = pygit2.Repository(scratch)
        clean.references.create(f"refs/heads/{branch}", commit)
        callbacks = pygit2.RemoteCallbacks(credentials=pygit2.UserPass("x-access-token", token))
        try:
            clean.remotes.create_anonymous(url).push(
                [f"refs/heads/{branch}:refs/heads/{branch}"], callbacks=callbacks
            )
        except pygit2.GitError as exc:
            raise SystemExit(f"push of {branch} to {url} failed: {exc}") from None
    return f"pushed {branch} to {url}"


def main() -> None:
    with open(os.environ["RUNNER_INPUT"], encoding="utf-8") as f:
        inputs = json.load(f)
    trigger = json.loads(os.environ.get("RUNNER_TRIGGER") or "{}")
    workspace = Path(os.environ["RUNNER_WORKSPACE"]).resolve()
    branch = inputs.get("branch") or f"runner/patch-{os.environ.get('RUNNER_RUN_ID', 'local')}"
    repo = pygit2.Repository(str(workspace))
    base = start(repo, trigger)
    with tempfile.TemporaryDirectory(prefix="patcher-") as tmp:
        files = export(repo, base.tree, Path(tmp))
        print(fix(Path(tmp)))
        tree, changed = fixed_tree(repo, base, Path(tmp), files)
    unfixable = [
        f for f in inputs.get("findings") or [] if str(f.get("rule", "")).startswith("secret/")
    ]
    for finding in unfixable:
        print(f"left for a person: {finding['file']}:{finding['line']} {finding['rule']}")
    result: dict[str, Any] = {"branch": "", "commit": "", "files": [], "patch": "", "pushed": False}
    if not changed:
        print("nothing to fix automatically")
    else:
        message = (
            f"Apply automatic lint fixes ({len(changed)} file(s))\n\n"
            "Made by the runner's patcher agent."
        )
        commit = repo.create_commit(None, AUTHOR, AUTHOR, message, tree, [base.id])
        made = repo[commit].peel(pygit2.Commit)
        repo.branches.local.create(branch, made)
        patch = repo.diff(base, made).patch or ""
        print(f"committed {commit} on {branch}: {', '.join(changed)}")
        token, url = os.environ.get("GIT_PUSH_TOKEN"), str(trigger.get("clone_url") or "")
        pushed = False
        if not inputs.get("push"):
            print("not pushed: push is false")
        elif not token:
            print("not pushed: no credentials (GIT_PUSH_TOKEN)")
        elif not url:
            print("not pushed: the run's trigger names no repository (clone_url) to push to")
        else:
            print(push(repo, commit, branch, url, token))
            pushed = True
        result = {"branch": branch, "commit": str(commit), "files": changed, "patch": patch}
        result["pushed"] = pushed
    result["unfixed"] = len(unfixable)
    with open(os.environ["RUNNER_OUTPUT"], "w", encoding="utf-8") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
