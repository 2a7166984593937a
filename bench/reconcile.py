"""Benchmark: reconciling a git source of 10,000 workflow files, cold and after a one-file
commit, next to `git fetch` + `git diff --name-only` on the same repositories in the same run
(the floor), and the incremental time for a 100-file repository.

Usage: python bench/reconcile.py [--files N] [--small N]
Targets: incremental reconcile within 3x the git floor; at most 1.5x slower at 10,000 files
than at 100.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))

from runner.source.git import GitSource, GitSourceConfig
from runner.source.reconciler import Reconciler
from runner.store.base import open_store

WORKFLOW = """\
apiVersion: runner/v1
kind: Workflow
metadata: {{name: wf-{i}}}
spec:
  triggers: [{{push: {{branches: [main]}}}}, {{manual: {{}}}}]
  steps:
    - {{id: scan, agent: security-scanner, with: {{paths: ["src/{i}"]}}}}
    - id: review
      agent: code-reviewer
      needs: [scan]
      when: "steps.scan.outputs.summary.high > {n}"
"""


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=b", "-c", "user.email=b@example.com", *args],
        cwd=cwd, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return done.stdout.strip()


def make_repo(root: Path, files: int) -> tuple[Path, Path]:
    remote, work = root / "remote.git", root / "work"
    git(root, "init", "-q", "--bare", "-b", "main", str(remote))
    git(root, "init", "-q", "-b", "main", str(work))
    (work / "workflows").mkdir()
    for i in range(files):
        (work / "workflows" / f"wf-{i}.yaml").write_text(WORKFLOW.format(i=i, n=i % 7))
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "many workflows")
    git(work, "remote", "add", "origin", str(remote))
    git(work, "push", "-q", "origin", "main")
    return remote, work


def one_change(work: Path) -> None:
    path = work / "workflows" / "wf-7.yaml"
    path.write_text(path.read_text().replace("high > 0", "high > 9"))
    git(work, "commit", "-q", "-am", "one change")
    git(work, "push", "-q", "origin", "main")


async def measure(files: int) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        remote, work = make_repo(root, files)
        mirror = root / "floor"
        git(root, "clone", "-q", "--bare", str(remote), str(mirror))
        store = open_store(f"sqlite:///{tmp}/runner.db")
        await store.open()
        await store.migrate()
        source = GitSource(GitSourceConfig(name="main", url=str(remote)), root / "data")
        reconciler = Reconciler(store, source)
        started = time.perf_counter()
        assert (await reconciler.reconcile()).applied
        cold = time.perf_counter() - started
        one_change(work)
        started = time.perf_counter()
        before = git(mirror, "rev-parse", "HEAD")
        git(mirror, "fetch", "-q", "origin", "+refs/heads/main:refs/heads/main")
        git(mirror, "diff", "--name-only", before, "HEAD")
        floor = time.perf_counter() - started
        started = time.perf_counter()
        result = await reconciler.reconcile()
        incremental = time.perf_counter() - started
        assert result.applied, result
        await store.close()
        return cold, incremental, floor


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--small", type=int, default=100)
    args = parser.parse_args()
    small = asyncio.run(measure(args.small))
    large = asyncio.run(measure(args.files))
    for label, (cold, incremental, floor) in ((args.small, small), (args.files, large)):
        print(
            f"{label:6d} files: cold {cold:7.3f}s | incremental {incremental:7.3f}s"
            f" | git fetch+diff {floor:7.3f}s | incremental/git {incremental / floor:6.1f}x"
        )
    print(f"incremental at {args.files} vs {args.small} files: {large[1] / small[1]:.1f}x")
    print("targets: incremental within 3x of git; at most 1.5x slower at the larger size")


if __name__ == "__main__":
    main()
