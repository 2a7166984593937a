"""code-reviewer: lint findings as review comments, from ruff's JSON output.

Reviews the whole workspace (or `paths`), or only the files the triggering push or pull request
changed when `changed_only` is true and the trigger lists them.
"""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import sys
from pathlib import Path


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
    trigger = json.loads(os.environ.get("RUNNER_TRIGGER") or "{}")
    targets = ["."]
    if inputs.get("changed_only") and trigger.get("changed_files"):
        targets = [p for p in trigger["changed_files"] if (workspace / p).is_file()]
        print(f"reviewing the {len(targets)} changed file(s)")
    patterns = inputs.get("paths")
    comments = []
    if targets:
        done = subprocess.run(
            [
                sys.executable,
                "-I",  # ruff itself: never a ruff.py of the project in the working directory
                "-m",
                "ruff",
                "check",
                "--output-format",
                "json",
                "--no-cache",
                "--exit-zero",
                "--extend-select",
                "E,B,UP,SIM",
                *isolated(workspace),
                *targets,
            ],
            cwd=workspace,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"ruff failed: {done.stderr.strip()}")
        for item in json.loads(done.stdout or "[]"):
            rel = Path(item["filename"]).resolve().relative_to(workspace).as_posix()
            if patterns and not any(fnmatch.fnmatch(rel, p) for p in patterns):
                continue
            comments.append(
                {
                    "file": rel,
                    "line": item["location"]["row"],
                    "rule": item["code"] or "syntax",
                    "message": item["message"],
                    "fixable": item.get("fix") is not None,
                }
            )
    print(f"{len(comments)} review comment(s)")
    for c in comments:
        print(f"  {c['file']}:{c['line']} {c['rule']}: {c['message']}")
    with open(os.environ["RUNNER_OUTPUT"], "w", encoding="utf-8") as f:
        json.dump({"comments": comments, "summary": {"count": len(comments)}}, f)


if __name__ == "__main__":
    main()
