"""Benchmark: reconciling a git source of 10,000 workflow files, cold and after a one-file
commit, next to `git fetch` + `git diff --name-only` on the same repositories in the same run
(the floor), and the incremental time for a 100-file repository.

Each size gets `--rounds` one-file commits; the figures are medians over them. Each commit is
also fetched by pygit2 alone into a mirror of its own (the same call GitSource makes): that is
the floor under the reconciler's own fetch, and under the ratio between the two sizes.

Usage: python bench/reconcile.py [--files N] [--small N] [--rounds N]
Targets: incremental reconcile within 3x the git floor; at most 1.5x slower at 10,000 files
than at 100.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
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


def one_change(work: Path, round_: int) -> None:
    path = work / "workflows" / "wf-7.yaml"
    path.write_text(WORKFLOW.format(i=7, n=10 + round_))  # a new condition: a real change
    git(work, "commit", "-q", "-am", "one change")
    git(work, "push", "-q", "origin", "main")


@dataclass(frozen=True)
class Figures:
    cold: float
    incremental: float  # medians over the rounds
    floor: float  # git fetch + git diff --name-only
    fetch: float  # pygit2's fetch alone
    beyond: float  # the incremental pass less its own fetch


async def measure(files: int, rounds: int) -> Figures:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        remote, work = make_repo(root, files)
        mirror = root / "floor"
        git(root, "clone", "-q", "--bare", str(remote), str(mirror))
        store = open_store(f"sqlite:///{tmp}/runner.db")
        await store.open()
        await store.migrate()
        source = GitSource(GitSourceConfig(name="main", url=str(remote)), root / "data")
        fetch_only = GitSource(GitSourceConfig(name="floor", url=str(remote)), root / "floor2")
        fetch_only._fetch()
        reconciler = Reconciler(store, source)
        own_fetch: list[float] = []
        fetch_call = source.fetch

        async def timed_fetch(deadline: float = 60.0) -> str:
            started = time.perf_counter()
            try:
                return await fetch_call(deadline)
            finally:
                own_fetch.append(time.perf_counter() - started)

        source.fetch = timed_fetch  # type: ignore[method-assign]
        started = time.perf_counter()
        assert (await reconciler.reconcile()).applied
        cold = time.perf_counter() - started
        incremental, floor, fetch, beyond = [], [], [], []
        for round_ in range(rounds):
            one_change(work, round_)
            started = time.perf_counter()
            before = git(mirror, "rev-parse", "HEAD")
            git(mirror, "fetch", "-q", "origin", "+refs/heads/main:refs/heads/main")
            git(mirror, "diff", "--name-only", before, "HEAD")
            floor.append(time.perf_counter() - started)
            started = time.perf_counter()
            fetch_only._fetch()
            fetch.append(time.perf_counter() - started)
            started = time.perf_counter()
            result = await reconciler.reconcile()
            incremental.append(time.perf_counter() - started)
            beyond.append(incremental[-1] - own_fetch[-1])
            assert result.applied, result
        await store.close()
        median = statistics.median
        return Figures(cold, median(incremental), median(floor), median(fetch), median(beyond))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    small = asyncio.run(measure(args.small, args.rounds))
    large = asyncio.run(measure(args.files, args.rounds))
    for label, f in ((args.small, small), (args.files, large)):
        print(
            f"{label:6d} files: cold {f.cold:7.3f}s | incremental {f.incremental:7.3f}s"
            f" | git fetch+diff {f.floor:7.3f}s | incremental/git {f.incremental / f.floor:6.1f}x"
        )
    ratio = large.incremental / small.incremental
    print(f"incremental at {args.files} vs {args.small} files: {ratio:.1f}x")
    print(
        f"pygit2 fetch alone: {small.fetch:7.3f}s at {args.small} files, {large.fetch:7.3f}s at"
        f" {args.files} ({large.fetch / small.fetch:.1f}x); at {args.files} files it is"
        f" {large.fetch / small.incremental:.1f}x the whole incremental pass at {args.small}"
    )
    print(
        f"incremental less its own fetch: {small.beyond:7.3f}s at {args.small} files,"
        f" {large.beyond:7.3f}s at {args.files} ({large.beyond / small.beyond:.1f}x)"
    )
    print(f"(medians of {args.rounds} one-file commits per size)")
    print("targets: incremental within 3x of git; at most 1.5x slower at the larger size")


if __name__ == "__main__":
    main()
