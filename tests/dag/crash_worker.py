"""A runner process for the crash test: python -m tests.dag.crash_worker DB REPO MODE.

start   apply the repo, request the run `crash`, lease it (2 s leases) and run it
resume  wait for the dead process's lease to expire, acquire whatever is left, run it
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from runner.dag.engine import Engine, EngineOptions
from runner.executors.local import LocalExecutor
from runner.model import RunRequest
from runner.revisions import BundleLoader, content_revision, local_source
from runner.spec.compile import compile_files
from runner.spec.repo import builtin_agents, repo_files
from runner.store.base import open_store
from runner.workspace import Workspaces

LEASE = 2.0


async def main(db: str, repo: Path, mode: str) -> None:
    store = open_store(f"sqlite:///{db}")
    await store.open()
    await store.migrate()
    engine = Engine(
        store,
        LocalExecutor(sandbox=False),
        BundleLoader(store.revision_documents, builtin_agents()),
        Workspaces(Path(db).parent / "workspaces"),
        EngineOptions(node=f"node-{mode}", lease=LEASE),
    )
    try:
        if mode == "start":
            result = compile_files(repo_files(repo, ""), builtins=builtin_agents())
            source, revision = local_source(repo), content_revision(result.documents)
            await store.apply_revision(source, revision, result.documents)
            run, _ = await store.request_run(
                RunRequest(
                    workflow="crash", source=source, revision=revision, idempotency_key="once"
                )
            )
            await store.acquire_run(engine.options.node, run.id, LEASE)
            await engine.run(run.id)
        else:
            while not (runs := await store.acquire_runs(engine.options.node, LEASE, 10)):
                await asyncio.sleep(0.2)
            for run in runs:
                done = await engine.run(run.id)
                print(done.status, flush=True)
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], Path(sys.argv[2]), sys.argv[3]))
