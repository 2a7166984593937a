"""The circuit breaker: its state machine on a scripted executor (with a clock the test moves),
then around the Dagger executor while the engine DOUBLE is stopped and restarted mid-run, with
the real run engine and worker pool: the run is not failed and completes once after recovery.
"""

from __future__ import annotations

import asyncio
import logging
import textwrap
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from runner.dag.engine import Engine, EngineOptions
from runner.executors.base import Executor, ExecutorUnavailable, Health, StepResult, StepSpec
from runner.executors.breaker import CircuitBreaker, CircuitOpen
from runner.model import FINISHED, Agent, RunRequest
from runner.revisions import BundleLoader, content_revision, local_source
from runner.spec.compile import compile_files
from runner.spec.repo import builtin_agents, repo_files
from runner.store.base import Store, open_store
from runner.worker import WorkerPool
from runner.workspace import Workspaces

pytestmark = pytest.mark.anyio


class Scripted:
    """An executor whose outcomes the test scripts: "ok", "exit" (the agent failed) or "down"
    (the engine is unreachable)."""

    name = "scripted"

    def __init__(self) -> None:
        self.outcomes: deque[str] = deque()
        self.calls = 0
        self.healthy = True
        self.health_calls = 0

    async def run_step(self, step: StepSpec, log: object) -> StepResult:
        self.calls += 1
        outcome = self.outcomes.popleft() if self.outcomes else "ok"
        if outcome == "down":
            raise ExecutorUnavailable("engine unreachable: connection refused")
        if outcome == "exit":
            return StepResult(exit_code=3, error="the agent exited with code 3")
        return StepResult(exit_code=0, outputs={})

    async def health(self) -> Health:
        self.health_calls += 1
        return Health(ok=self.healthy, detail="engine v1" if self.healthy else "engine down")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


STEP = StepSpec(
    run_id=1,
    step_id="s",
    attempt=1,
    agent=Agent(name="a", command=("true",), directory=".", source="t", digest="d"),
    inputs={},
    workspace=Path("."),
    timeout=10,
)


async def nolog(data: bytes) -> None:
    pass


def gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value("runner_executor_circuit_state", {"executor": name})


@pytest.fixture
def scripted() -> Scripted:
    return Scripted()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def breaker(inner: Executor, clock: Clock, **options: float) -> CircuitBreaker:
    return CircuitBreaker(inner, clock=clock, **options)  # type: ignore[arg-type]


async def fail(b: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        with pytest.raises(ExecutorUnavailable):
            await b.run_step(STEP, nolog)


# -- the state machine ------------------------------------------------------------------------
async def test_opens_after_five_engine_failures_within_two_minutes(
    scripted: Scripted, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    b = breaker(scripted, clock)
    assert (b.failures, b.window, b.cooldown, b.successes) == (5, 120.0, 60.0, 3)
    assert b.state == "closed"
    assert gauge("scripted") == 0
    scripted.outcomes.extend(["down"] * 5)
    await fail(b, 4)
    assert b.state == "closed"
    clock.now += 100
    await fail(b, 1)
    assert b.state == "open"
    assert gauge("scripted") == 2
    assert [(t.before, t.after) for t in b.transitions] == [("closed", "open")]
    assert "5 engine failures within 120s" in b.transitions[-1].reason
    assert "executor scripted circuit closed -> open" in caplog.text


async def test_failures_spread_wider_than_the_window_do_not_open_it(
    scripted: Scripted, clock: Clock
) -> None:
    b = breaker(scripted, clock)
    scripted.outcomes.extend(["down"] * 10)
    for _ in range(10):
        await fail(b, 1)
        clock.now += 31  # 4 failures per 2 minutes at most
    assert b.state == "closed"


async def test_an_agents_failure_never_counts(scripted: Scripted, clock: Clock) -> None:
    b = breaker(scripted, clock, failures=2)
    scripted.outcomes.extend(["exit"] * 10)
    for _ in range(10):
        result = await b.run_step(STEP, nolog)
        assert result.exit_code == 3
    assert b.state == "closed"


async def test_while_open_steps_are_refused_without_calling_the_engine(
    scripted: Scripted, clock: Clock
) -> None:
    b = breaker(scripted, clock, failures=2)
    scripted.outcomes.extend(["down"] * 2)
    await fail(b, 2)
    calls = scripted.calls
    with pytest.raises(CircuitOpen) as refused:
        await b.run_step(STEP, nolog)
    assert isinstance(refused.value, ExecutorUnavailable)  # the engine pauses the run
    assert refused.value.retry_after == pytest.approx(60)
    assert "connection refused" in str(refused.value)
    assert scripted.calls == calls
    health = await b.health()
    assert not health.ok
    assert health.detail.startswith("degraded: circuit open")
    assert scripted.health_calls == 0
    assert not b.accepting()


async def test_half_open_after_the_cooldown_then_closed_after_three_successes(
    scripted: Scripted, clock: Clock
) -> None:
    b = breaker(scripted, clock, failures=1)
    scripted.outcomes.append("down")
    await fail(b, 1)
    clock.now += 59
    assert b.state == "open"
    clock.now += 1
    assert b.state == "half_open"
    assert gauge("scripted") == 1
    assert not (await b.health()).ok  # still degraded while half-open
    for expected in ("half_open", "half_open", "closed"):
        await b.run_step(STEP, nolog)
        assert b.state == expected
    assert gauge("scripted") == 0
    assert [(t.before, t.after) for t in b.transitions] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]


async def test_a_failed_trial_opens_it_again_for_a_full_cooldown(
    scripted: Scripted, clock: Clock
) -> None:
    b = breaker(scripted, clock, failures=1, cooldown=10)
    scripted.outcomes.extend(["down", "ok", "down"])
    await fail(b, 1)
    clock.now += 10
    await b.run_step(STEP, nolog)
    await fail(b, 1)
    assert b.state == "open"
    clock.now += 9
    assert b.state == "open"
    clock.now += 1
    assert b.state == "half_open"


async def test_half_open_lets_one_trial_through_at_a_time(clock: Clock) -> None:
    release = asyncio.Event()

    class Slow(Scripted):
        async def run_step(self, step: StepSpec, log: object) -> StepResult:
            await release.wait()
            return await super().run_step(step, log)

    slow = Slow()
    b = breaker(slow, clock, failures=1)
    slow.outcomes.append("down")
    release.set()
    await fail(b, 1)
    release.clear()
    clock.now += 60
    trial = asyncio.create_task(b.run_step(STEP, nolog))
    await asyncio.sleep(0)
    with pytest.raises(CircuitOpen, match="a trial step is running"):
        await b.run_step(STEP, nolog)
    release.set()
    assert (await trial).ok


async def test_settings_are_configurable(scripted: Scripted, clock: Clock) -> None:
    b = breaker(scripted, clock, failures=2, window=5, cooldown=1, successes=1)
    scripted.outcomes.extend(["down", "down"])
    await fail(b, 2)
    clock.now += 1
    await b.run_step(STEP, nolog)
    assert b.state == "closed"
    with pytest.raises(ValueError, match="failures and successes"):
        CircuitBreaker(scripted, failures=0)


async def test_the_health_check_counts_and_closes_the_circuit_by_itself(
    scripted: Scripted, clock: Clock
) -> None:
    b = breaker(scripted, clock, failures=2, successes=2)
    scripted.healthy = False
    await b.check()
    assert b.state == "closed"
    await b.check()
    assert b.state == "open"
    calls = scripted.health_calls
    await b.check()  # open: the engine is not asked during the cool-down
    assert scripted.health_calls == calls
    scripted.healthy = True
    clock.now += 60
    assert not (await b.check()).ok  # first success of two: half-open, still degraded
    assert (await b.check()).ok
    assert b.state == "closed"


async def test_watch_checks_at_start_and_periodically(scripted: Scripted) -> None:
    b = CircuitBreaker(scripted, failures=1)
    stop = asyncio.Event()
    task = asyncio.create_task(b.watch(stop, interval=0.05))
    await asyncio.sleep(0.3)
    stop.set()
    await task
    assert scripted.health_calls >= 3


# -- around the Dagger executor, with the run engine ------------------------------------------
AGENT = """\
apiVersion: runner/v1
kind: Agent
metadata: {name: echo}
spec:
  image: python:3.12-slim
  command: [python, main.py]
  timeout: 60s
"""
PROGRAM = """\
import json, os
inputs = json.load(open(os.environ["RUNNER_INPUT"]))
print("step", os.environ["RUNNER_STEP_ID"])
json.dump({"n": inputs.get("n", 0) + 1}, open(os.environ["RUNNER_OUTPUT"], "w"))
"""
WORKFLOW = """\
apiVersion: runner/v1
kind: Workflow
metadata: {name: two}
spec:
  triggers: [{manual: {}}]
  steps:
    - id: a
      agent: echo
    - id: b
      agent: echo
      needs: [a]
      with: {n: "${{ steps.a.outputs.n }}"}
"""


@dataclass
class World:
    store: Store
    engine: Engine
    events: list[tuple[int, str, str]]

    async def request(self, repo: Path) -> int:
        result = compile_files(repo_files(repo, ""), builtins=builtin_agents())
        assert result.errors == [], result.errors
        source, revision = local_source(repo), content_revision(result.documents)
        await self.store.apply_revision(source, revision, result.documents)
        run, _ = await self.store.request_run(
            RunRequest(
                workflow="two",
                source=source,
                revision=revision,
                idempotency_key="k",
                trigger={"event": "manual", "actor": "ci", "sha": None},
            )
        )
        return run.id

    async def wait(self, predicate: Callable[[], object], *, limit: float = 60) -> None:
        async with asyncio.timeout(limit):
            while not predicate():
                await asyncio.sleep(0.05)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "agents" / "echo").mkdir(parents=True)
    (root / "agents" / "echo" / "agent.yaml").write_text(AGENT)
    (root / "agents" / "echo" / "main.py").write_text(PROGRAM)
    (root / "workflows").mkdir()
    (root / "workflows" / "two.yaml").write_text(textwrap.dedent(WORKFLOW))
    return root


@pytest.fixture
async def make_world(tmp_path: Path) -> AsyncIterator[Callable[[Executor], World]]:
    store = open_store(f"sqlite:///{tmp_path}/runner.db")
    await store.open()
    await store.migrate()

    def build(executor: Executor) -> World:
        events: list[tuple[int, str, str]] = []
        engine = Engine(
            store,
            executor,
            BundleLoader(store.revision_documents, builtin_agents()),
            Workspaces(tmp_path / "workspaces"),
            EngineOptions(node="n1", lease=30, max_parallel=2),
            listener=lambda run, step, status: events.append((run, step, status)),
        )
        return World(store=store, engine=engine, events=events)

    try:
        yield build
    finally:
        await store.close()


async def test_engine_double_stopped_mid_run_opens_the_breaker_and_the_run_completes_once(
    engine_double: object, make_world: Callable[[Executor], World], repo: Path
) -> None:
    from runner.executors.dagger import DaggerExecutor
    from tests.executors.dagger_double import EngineDouble

    assert isinstance(engine_double, EngineDouble)
    double = engine_double
    inner = DaggerExecutor(session_port=double.port, session_token=double.token, connect_timeout=5)
    guarded = CircuitBreaker(inner, failures=2, window=60, cooldown=0.3, successes=2)
    world = make_world(guarded)
    stopped = threading.Event()

    def on_event(run: int, step: str, status: str) -> None:
        world.events.append((run, step, status))
        if (step, status) == ("b", "running") and not stopped.is_set():
            stopped.set()  # the engine goes away while b's exec is on it
            double.exec_delay = 30
            threading.Timer(0.5, double.stop).start()

    world.engine.listener = on_event
    run_id = await world.request(repo)
    pool = WorkerPool(world.engine, slots=1, poll=0.05)
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(pool.run_forever(stop, grace=1)),
        asyncio.create_task(guarded.watch(stop, interval=0.1)),
    ]
    try:
        await world.wait(lambda: guarded.state == "open", limit=60)
        run = await world.store.get_run(run_id)
        assert run is not None
        assert run.status not in FINISHED  # not failed: it waits for the engine
        steps = {s.step_id: s for s in await world.store.get_steps(run_id)}
        assert steps["a"].status == "succeeded"
        assert steps["b"].status in ("pending", "running")
        assert not (await guarded.health()).ok
        assert gauge("dagger") in (1, 2)
        async with asyncio.timeout(60):  # paused once b's call failed: it says what for
            while (paused := await world.store.get_run(run_id)) and paused.wait is None:
                await asyncio.sleep(0.05)
        assert paused is not None
        assert paused.status == "queued"
        assert paused.wait is not None
        assert paused.wait["for"] == "executor"
        assert paused.wait["reason"].startswith("the executor is unavailable: ")

        double.exec_delay = 0
        double.start()  # same port: the engine is back

        async def finished() -> bool:
            found = await world.store.get_run(run_id)
            return found is not None and found.status in FINISHED

        async with asyncio.timeout(60):
            while not await finished():
                await asyncio.sleep(0.05)
        await world.wait(lambda: guarded.state == "closed", limit=10)  # the checks close it
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await inner.aclose()
    run = await world.store.get_run(run_id)
    assert run is not None
    assert run.status == "succeeded"
    assert run.wait is None
    steps = {s.step_id: s for s in await world.store.get_steps(run_id)}
    assert steps["b"].outputs == {"n": 2}
    # each step's agent ran once on the engine: b's first exec was cut before it started
    assert len([argv for argv in double.execs if argv[:2] == ("sh", "-c")]) == 2
    moves = [(t.before, t.after) for t in guarded.transitions]
    assert moves[0] == ("closed", "open"), guarded.transitions
    assert moves[-2:] == [("open", "half_open"), ("half_open", "closed")], guarded.transitions
    assert guarded.state == "closed"
    assert gauge("dagger") == 0
    assert (await guarded.health()).ok


# -- what the run engine and worker still have to do (issue 8) ---------------------------------
async def test_while_the_circuit_is_open_a_paused_run_waits_queued(
    scripted: Scripted, make_world: Callable[[Executor], World], repo: Path
) -> None:
    guarded = CircuitBreaker(scripted, failures=1, cooldown=3600)
    scripted.outcomes.append("down")
    world = make_world(guarded)
    run_id = await world.request(repo)
    assert await world.store.acquire_run("n1", run_id, 30) is not None
    await world.engine.run(run_id)
    assert guarded.state == "open"
    run = await world.store.get_run(run_id)
    assert run is not None
    steps = {s.step_id: s.status for s in await world.store.get_steps(run_id)}
    assert steps["a"] == "pending"  # not failed (this part holds today)
    assert run.status == "queued"
    assert run.wait is not None  # and it says what it waits for
    assert run.wait["for"] == "executor"
    assert run.wait["reason"].startswith("the executor is unavailable: ")


async def test_while_the_circuit_is_open_workers_do_not_take_runs(
    scripted: Scripted, make_world: Callable[[Executor], World], repo: Path
) -> None:
    guarded = CircuitBreaker(scripted, failures=1, cooldown=3600)
    scripted.healthy = False
    await guarded.check()
    assert guarded.state == "open"
    world = make_world(guarded)
    run_id = await world.request(repo)
    pool = WorkerPool(world.engine, slots=1, poll=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(pool.run_forever(stop, grace=1))
    await asyncio.sleep(1)
    stop.set()
    await task
    started = [e for e in world.events if e[2] == "running"]
    assert started == []  # today: a busy loop of starts refused by the breaker
    run = await world.store.get_run(run_id)
    assert run is not None
    assert run.status == "queued"
    assert run.wait is not None  # not taken up, and it says why
    assert run.wait["for"] == "executor"
    assert "circuit breaker is open" in run.wait["reason"]


async def test_breaker_transitions_are_logged_at_warning_when_opening(
    scripted: Scripted, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="runner.executors.breaker")
    b = breaker(scripted, clock, failures=1, successes=1)
    scripted.outcomes.append("down")
    await fail(b, 1)
    clock.now += 60
    await b.run_step(STEP, nolog)
    levels = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert levels[0][0] == "WARNING"
    assert "closed -> open" in levels[0][1]
    assert [m for _, m in levels[1:]] == [
        "executor scripted circuit open -> half_open: cool-down of 60s over",
        "executor scripted circuit half_open -> closed: 1 consecutive successes",
    ]


async def test_a_run_cancelled_while_the_engine_is_down_stays_cancelled(
    scripted: Scripted, make_world: Callable[[Executor], World], repo: Path
) -> None:
    world = make_world(scripted)
    run_id = await world.request(repo)

    class CancelledMeanwhile(Scripted):
        async def run_step(self, step: StepSpec, log: object) -> StepResult:
            await world.store.transition_run(step.run_id, "cancelled", error="cancelled by ci")
            raise ExecutorUnavailable("engine unreachable")

    world.engine.executor = CancelledMeanwhile()
    assert await world.store.acquire_run("n1", run_id, 30) is not None
    await world.engine.run(run_id)
    run = await world.store.get_run(run_id)
    assert run is not None
    assert (run.status, run.error) == ("cancelled", "cancelled by ci")  # not queued again


async def test_half_open_the_trial_in_flight_finishes_before_the_run_pauses(
    make_world: Callable[[Executor], World], tmp_path: Path, repo: Path
) -> None:
    """Two parallel steps while half-open: one is the trial, the other is refused. The trial is
    not cancelled; it succeeds, the circuit closes, and the run then completes."""
    (repo / "workflows" / "two.yaml").write_text(
        "apiVersion: runner/v1\nkind: Workflow\nmetadata: {name: two}\n"
        "spec:\n  triggers: [{manual: {}}]\n"
        "  steps: [{id: a, agent: echo}, {id: b, agent: echo}]\n"
    )

    class Slow(Scripted):
        async def run_step(self, step: StepSpec, log: object) -> StepResult:
            await asyncio.sleep(0.2)
            return await super().run_step(step, log)

    clock = Clock()
    slow = Slow()
    guarded = CircuitBreaker(slow, failures=1, cooldown=10, successes=1, clock=clock)
    slow.outcomes.append("down")
    with pytest.raises(ExecutorUnavailable):
        await guarded.run_step(STEP, log=None)  # type: ignore[arg-type]
    clock.now += 11  # cool-down over: the next step is the trial
    world = make_world(guarded)
    run_id = await world.request(repo)
    assert await world.store.acquire_run("n1", run_id, 30) is not None
    paused = await world.engine.run(run_id)
    assert paused.status == "queued"
    assert guarded.state == "closed"  # the trial was allowed to finish, and succeeded
    steps = {s.step_id: s.status for s in await world.store.get_steps(run_id)}
    assert sorted(steps.values()) == ["pending", "succeeded"]
    assert await world.store.acquire_run("n1", run_id, 30) is not None
    assert (await world.engine.run(run_id)).status == "succeeded"
    assert slow.calls == 3  # the failure, the trial, and the refused step once more
