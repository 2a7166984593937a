"""A small workflows repo with trivial agents, a SQLite store and an engine over them."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from runner.dag.engine import Engine, EngineOptions
from runner.executors.local import LocalExecutor
from runner.model import Run, RunRequest
from runner.revisions import BundleLoader, content_revision, local_source
from runner.spec.compile import compile_files
from runner.spec.repo import builtin_agents, repo_files
from runner.store.base import Store, open_store
from runner.workspace import Workspaces

ECHO = """
import json, os, sys, time
inputs = json.load(open(os.environ["RUNNER_INPUT"]))
print("inputs", json.dumps(inputs, sort_keys=True))
counter = inputs.get("count_file")
if counter:
    with open(counter, "a") as f:
        f.write(os.environ["RUNNER_STEP_ID"] + "\\n")
if inputs.get("sleep"):
    time.sleep(inputs["sleep"])
hold = inputs.get("hold_file")
while hold and os.path.exists(hold):
    time.sleep(0.05)
if inputs.get("fail"):
    sys.exit(int(inputs["fail"]))
output = {"value": inputs.get("value"), "n": inputs.get("n", 0)}
json.dump(output, open(os.environ["RUNNER_OUTPUT"], "w"))
"""


def agent_yaml(name: str, risk: str = "auto") -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: runner/v1
        kind: Agent
        metadata: {{name: {name}}}
        spec:
          command: [python, main.py]
          risk: {risk}
          timeout: 60s
        """
    )


@dataclass
class Harness:
    store: Store
    engine: Engine
    repo: Path
    tmp: Path
    events: list[tuple[int, str, str]]

    def write(self, name: str, text: str) -> None:
        (self.repo / "workflows" / f"{name}.yaml").write_text(textwrap.dedent(text))

    async def start(
        self,
        workflow: str,
        *,
        key: str = "k",
        actor: str = "ci",
        trigger: dict[str, Any] | None = None,  # more of the trigger (a forge's delivery)
        **extra: Any,
    ) -> Run:
        result = compile_files(repo_files(self.repo, ""), builtins=builtin_agents())
        assert result.errors == [], result.errors
        source = local_source(self.repo)
        revision = content_revision(result.documents)
        await self.store.apply_revision(source, revision, result.documents)
        run, _ = await self.store.request_run(
            RunRequest(
                workflow=workflow,
                source=source,
                revision=revision,
                idempotency_key=key,
                trigger={"event": "manual", "actor": actor, "sha": None, **(trigger or {})},
                **extra,
            )
        )
        return run

    async def go(self, run_id: int) -> Run:
        held = await self.store.acquire_run("test-node", run_id, 60)
        assert held is not None
        return await self.engine.run(run_id)

    async def statuses(self, run_id: int) -> dict[str, str]:
        return {s.step_id: s.status for s in await self.store.get_steps(run_id)}


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    repo = tmp_path / "repo"
    for name, risk in (("echo", "auto"), ("risky", "approval_required")):
        folder = repo / "agents" / name
        folder.mkdir(parents=True)
        (folder / "agent.yaml").write_text(agent_yaml(name, risk))
        (folder / "main.py").write_text(ECHO)
    (repo / "workflows").mkdir()
    store = open_store(f"sqlite:///{tmp_path}/runner.db")
    await store.open()
    await store.migrate()
    events: list[tuple[int, str, str]] = []
    engine = Engine(
        store,
        LocalExecutor(sandbox=False),
        BundleLoader(store.revision_documents, builtin_agents()),
        Workspaces(tmp_path / "workspaces"),
        EngineOptions(node="test-node", max_parallel=4),
        listener=lambda run, step, status: events.append((run, step, status)),
    )
    try:
        yield Harness(store=store, engine=engine, repo=repo, tmp=tmp_path, events=events)
    finally:
        await store.close()
