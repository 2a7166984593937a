"""patcher: applies ruff's automatic fixes on a new branch, committed with pygit2.

Outputs the branch, the commit, the files changed and the patch. Pushes the branch to the
workspace's `origin` only when `push` is true and credentials are given ($GIT_PUSH_TOKEN).
Findings that no tool can fix (a committed secret) are listed as left for a person.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pygit2

AUTHOR = pygit2.Signature("runner patcher", "runner@localhost")


def push(repo: pygit2.Repository, branch: str, token: str) -> str:
    if "origin" not in [r.name for r in repo.remotes]:
        return "not pushed: the workspace has no origin remote"
    callbacks = pygit2.RemoteCallbacks(credentials=pygit2.UserPass("x-access-token", token))
    try:
        repo.remotes["origin"].push(
            [f"refs/heads/{branch}:refs/heads/{branch}"], callbacks=callbacks
        )
    except pygit2.GitError as exc:
        raise SystemExit(f"push of {branch} failed: {exc}") from None
    return f"pushed {branch} to origin"


def isolated(workspace: Path) -> list[str]:
    """The repository's own ruff configuration, or none at all (never one from a parent folder)."""
    own = any((workspace / name).is_file() for name in ("ruff.toml", ".ruff.toml"))
    pyproject = workspace / "pyproject.toml"
    own = own or (pyproject.is_file() and "[tool.ruff" in pyproject.read_text(encoding="utf-8"))
    return [] if own else ["--isolated"]


def main() -> None:
    with open(os.environ["RUNNER_INPUT"], encoding="utf-8") as f:
        inputs = json.load(f)
    workspace = Path(os.environ["RUNNER_WORKSPACE"]).resolve()
    branch = inputs.get("branch") or f"runner/patch-{os.environ.get('RUNNER_RUN_ID', 'local')}"
    repo = pygit2.Repository(str(workspace))
    fixed = subprocess.run(
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
            *isolated(workspace),
            ".",
        ],
        cwd=workspace,
        capture_output=True,
        text=True,
        check=False,
    )
    print(fixed.stdout.strip())
    changed = sorted(
        path for path, flags in repo.status().items() if flags & pygit2.enums.FileStatus.WT_MODIFIED
    )
    unfixable = [
        f for f in inputs.get("findings") or [] if str(f.get("rule", "")).startswith("secret/")
    ]
    for finding in unfixable:
        print(f"left for a person: {finding['file']}:{finding['line']} {finding['rule']}")
    if not changed:
        print("nothing to fix automatically")
        result = {
            "branch": "",
            "commit": "",
            "files": [],
            "patch": "",
            "pushed": False,
            "unfixed": len(unfixable),
        }
    else:
        head = repo.head.peel(pygit2.Commit)
        repo.index.add_all(changed)
        repo.index.write()
        tree = repo.index.write_tree()
        message = (
            f"Apply automatic lint fixes ({len(changed)} file(s))\n\n"
            "Made by the runner's patcher agent."
        )
        commit = repo.create_commit(None, AUTHOR, AUTHOR, message, tree, [head.id])
        repo.branches.local.create(branch, repo[commit])
        patch = repo.diff(head, repo[commit]).patch or ""
        print(f"committed {commit} on {branch}: {', '.join(changed)}")
        token = os.environ.get("GIT_PUSH_TOKEN")
        if inputs.get("push") and token:
            print(push(repo, branch, token))
            pushed = True
        else:
            print(
                "not pushed: "
                + ("push is false" if not inputs.get("push") else "no credentials (GIT_PUSH_TOKEN)")
            )
            pushed = False
        result = {
            "branch": branch,
            "commit": str(commit),
            "files": changed,
            "patch": patch,
            "pushed": pushed,
            "unfixed": len(unfixable),
        }
    with open(os.environ["RUNNER_OUTPUT"], "w", encoding="utf-8") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
