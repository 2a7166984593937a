"""Benchmark: the engine's orchestration overhead per step, next to Prefect 3.

Two shapes of 1,000 trivial steps: a fan-out/fan-in DAG (1 -> 998 -> 1) and a chain. Every
state transition is stored (SQLite, the default store). Overhead per step is the wall time of
the run minus the time inside agents, divided by the steps; agents here are no-ops answered by
an in-process executor, so all of the wall time is orchestration (the local executor's process
start-up is the agent's own cost, not the engine's).

Prefect 3 runs the same shapes in the same run: installed by this script into its own venv
(.bench-venv/prefect), offline with a fresh PREFECT_HOME (it starts its own server on
127.0.0.1), timed until its server has stored every task run's final state.

Usage: python bench/engine.py [--steps N] [--no-prefect]
Target: at most 2 ms of overhead per step, and at least 20x lower than Prefect's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))

from runner.dag.engine import Engine, EngineOptions
from runner.executors.base import Health, LogSink, StepResult, StepSpec
from runner.model import RunRequest
from runner.revisions import BundleLoader, content_revision, local_source
from runner.spec.compile import compile_files
from runner.spec.repo import builtin_agents, repo_files
from runner.store.base import open_store
from runner.workspace import Workspaces

ROOT = Path(__file__).parents[1]
PREFECT_VENV = ROOT / ".bench-venv" / "prefect"


class NoopExecutor:
    """Answers every step at once: the time inside agents is zero by construction."""

    name = "noop"

    async def run_step(self, step: StepSpec, log: LogSink) -> StepResult:
        return StepResult(exit_code=0, outputs={})

    async def health(self) -> Health:
        return Health(ok=True)


def workflow(shape: str, steps: int) -> str:
    lines = ["apiVersion: runner/v1", "kind: Workflow", f"metadata: {{name: {shape}}}", "spec:"]
    lines += ["  triggers: [{manual: {}}]", "  steps:"]
    if shape == "fanout":
        lines.append("    - {id: s0, agent: noop}")
        lines += [f"    - {{id: s{i}, agent: noop, needs: [s0]}}" for i in range(1, steps - 1)]
        fan_in = ", ".join(f"s{i}" for i in range(1, steps - 1))
        lines.append(f"    - {{id: s{steps - 1}, agent: noop, needs: [{fan_in}]}}")
    else:
        lines.append("    - {id: s0, agent: noop}")
        lines += [f"    - {{id: s{i}, agent: noop, needs: [s{i - 1}]}}" for i in range(1, steps)]
    return "\n".join(lines) + "\n"


async def ours(shape: str, steps: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        (repo / "workflows").mkdir(parents=True)
        (repo / "agents" / "noop").mkdir(parents=True)
        (repo / "agents" / "noop" / "agent.yaml").write_text(
            "apiVersion: runner/v1\nkind: Agent\nmetadata: {name: noop}\n"
            'spec: {command: ["true"]}\n'
        )
        (repo / "workflows" / f"{shape}.yaml").write_text(workflow(shape, steps))
        compiled = compile_files(repo_files(repo, ""), builtins=builtin_agents())
        assert not compiled.errors, compiled.errors[:3]
        store = open_store(f"sqlite:///{tmp}/runner.db")
        await store.open()
        await store.migrate()
        source, revision = local_source(repo), content_revision(compiled.documents)
        await store.apply_revision(source, revision, compiled.documents)
        engine = Engine(
            store,
            NoopExecutor(),
            BundleLoader(store.revision_documents, builtin_agents()),
            Workspaces(Path(tmp) / "workspaces"),
            EngineOptions(node="bench", max_parallel=64),
        )
        run, _ = await store.request_run(
            RunRequest(workflow=shape, source=source, revision=revision, idempotency_key="b")
        )
        await store.acquire_run("bench", run.id, 600)
        started = time.perf_counter()
        done = await engine.run(run.id)
        elapsed = time.perf_counter() - started
        stored = [s for s in await store.get_steps(run.id) if s.status == "succeeded"]
        await store.close()
        assert done.status == "succeeded", done
        assert len(stored) == steps, len(stored)
        return elapsed


PREFECT_SCRIPT = r"""
import asyncio, json, sys, time
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

shape, steps = sys.argv[1], int(sys.argv[2])

@task
def noop(*_):
    return None

@flow
def fanout():
    first = noop.submit()
    middle = [noop.submit(wait_for=[first]) for _ in range(steps - 2)]
    noop.submit(wait_for=middle).result()

@flow
def chain():
    value = None
    for _ in range(steps):
        value = noop(value)

async def stored(flow_run_id):
    async with get_client() as client:
        while True:
            done, offset = 0, 0
            while True:
                page = await client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                    limit=200, offset=offset,
                )
                done += sum(1 for r in page if r.state and r.state.is_final())
                if len(page) < 200:
                    break
                offset += 200
            if done >= steps:
                return
            await asyncio.sleep(0.2)

started = time.perf_counter()
state = (fanout if shape == "fanout" else chain)(return_state=True)
asyncio.run(stored(state.state_details.flow_run_id))
print(json.dumps({"seconds": time.perf_counter() - started}))
"""


def prefect(shape: str, steps: int) -> float:
    python = PREFECT_VENV / "bin" / "python"
    if not python.exists():
        print("installing Prefect 3 into .bench-venv/prefect (once) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(PREFECT_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "prefect>=3,<4"], check=True)
    with tempfile.TemporaryDirectory() as home:
        env = {
            **os.environ,
            "PREFECT_HOME": home,
            "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOGGING_LEVEL": "ERROR",
        }
        done = subprocess.run(
            [str(python), "-c", PREFECT_SCRIPT, shape, str(steps)],
            env=env,
            capture_output=True,
            text=True,
            timeout=3600,
        )
        if done.returncode != 0:
            raise RuntimeError(f"Prefect failed: {done.stderr[-2000:]}")
        return float(json.loads(done.stdout.strip().splitlines()[-1])["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--no-prefect", action="store_true")
    args = parser.parse_args()
    for shape in ("fanout", "chain"):
        mine = asyncio.run(ours(shape, args.steps))
        per_step = mine / args.steps * 1000
        line = f"{shape:7s} runner {per_step:7.3f} ms/step ({mine:6.2f}s for {args.steps} steps)"
        if not args.no_prefect:
            theirs = prefect(shape, args.steps)
            theirs_per = theirs / args.steps * 1000
            line += (
                f" | Prefect 3 {theirs_per:8.3f} ms/step ({theirs:6.2f}s) | {theirs / mine:6.1f}x"
            )
        print(line, flush=True)
    print("target: at most 2 ms/step, at least 20x below Prefect")


if __name__ == "__main__":
    main()
