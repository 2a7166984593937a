"""The run engine: drives one leased run through its DAG, storing every transition.

A run executes the workflow of the revision it was requested under. Ready steps start in
parallel up to a limit; each step's `when`, `with` templates and approval gate are evaluated
just before it would start. State is written at every transition, so a process that dies
mid-run leaves a run that any node (or the same one, restarted) continues from its last
recorded step: finished steps are kept, an interrupted step runs again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from runner import logs, metrics, tracing
from runner.approvals import close_gates
from runner.dag import control, graph
from runner.dag.cancels import CancelWatch
from runner.errors import PermanentError
from runner.executors.base import Executor, ExecutorUnavailable, StepSpec
from runner.model import (
    FINISHED,
    Agent,
    Approval,
    ApprovalPolicy,
    Run,
    RunStatus,
    Step,
    StepRun,
    StepStatus,
    WaitFor,
    run_wait,
)
from runner.reporting import Reporter
from runner.revisions import BundleLoader
from runner.secrets.grants import AgentPolicy
from runner.secrets.store import Granted, SecretStore
from runner.spec.expr import EvaluationError, evaluate, render
from runner.spec.quantity import memory_bytes
from runner.store.base import Store
from runner.workspace import Workspaces, WorkspaceUnavailable

log = logging.getLogger(__name__)
ACTIVE: list[RunStatus] = ["queued", "running", "waiting_approval"]
Listener = Callable[[int, str, str], None]  # run id, step id, status


@dataclass(frozen=True, kw_only=True)
class EngineOptions:
    node: str
    lease: float = 60.0
    max_parallel: int = 4
    default_timeout: float = 600.0
    # the granted secrets (none without one): what each agent gets, and what every log masks
    secrets: SecretStore | None = None
    # how long a run retries a repository that cannot be fetched for now before it fails
    fetch_deadline: float = 1800.0


# a repository that cannot be fetched for now is tried again after the time it has failed so
# far (exponential backoff), within these bounds and never past the run's fetch deadline
FETCH_RETRY_MIN = 5.0
FETCH_RETRY_MAX = 300.0


def inputs_digest(inputs: Mapping[str, Any]) -> str:
    text = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


class _Go:
    """A step cleared to start, with its resolved inputs."""

    def __init__(self, inputs: dict[str, Any], digest: str) -> None:
        self.inputs, self.digest = inputs, digest


class Engine:
    def __init__(
        self,
        store: Store,
        executor: Executor,
        loader: BundleLoader,
        workspaces: Workspaces,
        options: EngineOptions,
        *,
        listener: Listener | None = None,
        reporter: Reporter | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.reporter = reporter
        self.store = store
        self.executor = executor
        self.loader = loader
        self.workspaces = workspaces
        self.options = options
        self.listener = listener
        self.clock = clock
        self.slots = asyncio.Semaphore(options.max_parallel)
        self.cancels = CancelWatch(store)  # a cancel reaches a running step within a second

    async def run(self, run_id: int) -> Run:
        """Advance a run this node holds the lease of, until it finishes, waits for an approval
        or can go no further here (lease lost, executor unavailable). Returns it as stored."""
        run = await self.store.get_run(run_id)
        if run is None:
            raise PermanentError(f"there is no run {run_id}")
        if run.status in FINISHED or run.status == "waiting_approval":
            return run
        with (
            logs.context(run_id=run.id, workflow=run.workflow),
            tracing.span(
                f"run {run.workflow}",
                parent=run.trigger.get("traceparent"),
                run_id=run.id,
                workflow=run.workflow,
                revision=run.revision,
            ),
        ):
            execution = _Execution(self, run)
            with self.cancels.watching(run.id, execution.cancelled):
                result = await execution.execute()
        await self.report(result)  # a run finished elsewhere (cancelled) is reported again
        return result

    async def report(self, run: Run) -> None:
        """Tell the forge the run triggered from (status, pull request comment); never raises."""
        if self.reporter is None or not run.trigger.get("forge"):
            return
        steps = await self.store.get_steps(run.id)
        pending = await self.store.list_approvals(run_id=run.id, status="pending")
        await self.reporter.report(run, steps, pending)


class _Execution:
    def __init__(self, engine: Engine, run: Run) -> None:
        self.engine, self.store, self.run = engine, engine.store, run
        self.status: dict[str, StepStatus] = {}
        self.records: dict[str, StepRun] = {}
        self.cancelled = asyncio.Event()
        self.lease_lost = False
        self.go: dict[str, _Go] = {}
        self.waited = run.wait  # what the run waited for when this attempt took it up

    # -- lifecycle --------------------------------------------------------------------------------
    async def execute(self) -> Run:
        try:
            bundle = await self.engine.loader.bundle(self.run.source, self.run.revision)
            workflow = bundle.workflows[self.run.workflow]
        except (PermanentError, KeyError) as exc:
            return await self._finish("failed", f"cannot load the workflow: {exc}")
        self.workflow, self.agents = workflow, bundle.agents
        if self.run.status == "queued":
            held = await self._concurrency()
            if held is not None:
                return held
            # a run trying its fetch again still says so (and is not reported again) until
            # its workspace is made
            retrying = self._waited("fetch")
            started = await self.store.transition_run(self.run.id, "running", wait=retrying)
            if started is None:
                return await self._current()
            self.run = started
            if retrying is None:
                await self.engine.report(started)
        for record in await self.store.get_steps(self.run.id):
            if record.status == "running":  # interrupted by a crash: it runs again
                record = replace(record, status="pending")
            self.records[record.step_id] = record
            self.status[record.step_id] = record.status
        self.steps = {step.id: step for step in workflow.steps}
        self.order = {step.id: i for i, step in enumerate(workflow.steps)}
        self.dependents: dict[str, list[str]] = {s.id: [] for s in workflow.steps}
        for step in workflow.steps:
            for need in step.needs:
                self.dependents[need].append(step.id)
        self.candidates: set[str] = set(self.steps)
        self.upstream = graph.ancestors(workflow)
        heartbeat = asyncio.create_task(self._heartbeat())  # a slow first fetch keeps the lease
        try:
            try:
                self.workspace = await self.engine.workspaces.prepare(self.run.id, self.run.trigger)
            except PermanentError as exc:
                return await self._finish("failed", f"cannot prepare the workspace: {exc}")
            if self.cancelled.is_set() or self.lease_lost:  # while the workspace was made
                return await self._conclude(False)
            if self.run.wait is not None:  # fetched at last: it waits no more
                self.run = await self.store.set_run_wait(self.run.id, None) or self.run
                await self.engine.report(self.run)
            timed_out = await self._loop()
        except (ExecutorUnavailable, WorkspaceUnavailable) as exc:  # not the run's fault
            # it waits queued, unfailed, saying what for and until when
            heartbeat.cancel()  # the lease is this path's to set now
            now = self.engine.clock()
            if isinstance(exc, WorkspaceUnavailable):
                wait = self._fetch_wait(str(exc), now)
                if wait is None:
                    deadline = self.engine.options.fetch_deadline
                    return await self._finish(
                        "failed",
                        f"cannot fetch the repository: still failing after {deadline:g}s"
                        f" (executor.fetch_deadline): {exc}",
                    )
            else:
                retry_after: float | None = getattr(exc, "retry_after", None)
                wait = run_wait(
                    "executor",
                    f"the executor is unavailable: {exc}",
                    self._since("executor", now),
                    None if retry_after is None else now + retry_after,
                )
            log.warning("run %d paused: %s", self.run.id, wait["reason"])
            requeued = await self.store.transition_run(
                self.run.id,
                "queued",
                only_from=["running"],  # never a cancelled run again
                wait=wait,
            )
            if requeued is None:  # cancelled meanwhile: finish as that
                self.cancelled.set()
                return await self._conclude(False)
            node = self.engine.options.node
            if isinstance(exc, ExecutorUnavailable):  # the breaker decides when to go on
                await self.store.release_run(node, self.run.id)
            else:  # held until its next attempt: no node takes it up before
                hold = max(float(wait["next_attempt"]) - now, 0.0)
                await self.store.extend_leases(node, [self.run.id], hold)
            return requeued
        finally:
            heartbeat.cancel()
        return await self._conclude(timed_out)

    def _waited(self, waits_for: WaitFor) -> dict[str, Any] | None:
        """The run's wait when this attempt took it up, if it waited for `waits_for`."""
        if self.waited is not None and self.waited.get("for") == waits_for:
            return dict(self.waited)
        return None

    def _since(self, waits_for: WaitFor, now: float) -> float:
        """When the run began waiting for `waits_for` (now, unless it already did)."""
        earlier = self._waited(waits_for)
        return float(earlier["since"]) if earlier is not None else now

    def _fetch_wait(self, reason: str, now: float) -> dict[str, Any] | None:
        """The wait of a run whose repository cannot be fetched for now: tried again after as
        long as it has failed so far (within FETCH_RETRY_MIN..MAX, not past the deadline);
        None once the run has failed to fetch for `fetch_deadline` (it fails)."""
        since = self._since("fetch", now)
        left = since + self.engine.options.fetch_deadline - now
        if left <= 0:
            return None
        delay = min(max(FETCH_RETRY_MIN, now - since), FETCH_RETRY_MAX, left)
        return run_wait("fetch", reason, since, now + delay)

    async def _conclude(self, timed_out: bool) -> Run:
        if self.lease_lost:
            return await self._current()
        unfinished = [s for s in self.workflow.steps if self.status.get(s.id) not in graph.DONE]
        if self.cancelled.is_set() or timed_out:
            for step in unfinished:
                await self._set(step, "cancelled", error="the run was cancelled or timed out")
            if timed_out:
                return await self._finish(
                    "failed", f"the workflow timed out after {self.workflow.timeout:g}s"
                )
            return await self._finish("cancelled", None)
        if any(self.status.get(s.id) == "waiting_approval" for s in unfinished):
            gates = await self.store.list_approvals(run_id=self.run.id, status="pending")
            reason = "; ".join(f"step {g.step_id} waits for approval {g.id}" for g in gates)
            wait = run_wait(
                "approval",
                reason or "a step waits for approval",
                min((g.requested_at for g in gates), default=self.engine.clock()),
            )
            waiting = await self.store.transition_run(self.run.id, "waiting_approval", wait=wait)
            return waiting or await self._current()
        return await self._finish(graph.outcome(self.status), None)

    async def _finish(self, status: RunStatus, error: str | None) -> Run:
        done = await self.store.transition_run(self.run.id, status, error=error)
        await close_gates(self.store, self.run.id, f"the run ended {status}")
        await self.engine.workspaces.release(self.run.id, failed=status != "succeeded")
        if done is None:  # finished meanwhile by someone else, who counted it
            return await self._current()
        metrics.run_finished(done.workflow, done.status, done.started_at, done.finished_at)
        self.run = done
        return done

    async def _current(self) -> Run:
        current = await self.store.get_run(self.run.id)
        assert current is not None
        return current

    async def _concurrency(self) -> Run | None:
        """None to go ahead; otherwise the run as it stays (queued behind another, skipped)."""
        group = self.run.concurrency_group
        if not group:
            return None
        others = [
            r
            for r in await self.store.list_runs(group=group, status=ACTIVE, limit=1000)
            if r.id != self.run.id
        ]
        policy = self.workflow.concurrency_policy
        busy = [r for r in others if r.status != "queued"]
        if policy == "skip" and busy:
            return await self._finish("skipped", f"run {busy[0].id} of group {group!r} is active")
        if policy == "queue" and (busy or any(r.id < self.run.id for r in others)):
            first = busy[0] if busy else min(others, key=lambda r: r.id)
            reason = f"run {first.id} of concurrency group {group!r} goes first"
            held = self.run
            if self.run.wait is None or self.run.wait.get("reason") != reason:
                since = self._since("concurrency", self.engine.clock())
                wait = run_wait("concurrency", reason, since)
                held = await self.store.set_run_wait(self.run.id, wait) or self.run
            await self.store.release_run(self.engine.options.node, self.run.id)
            return held
        if policy == "cancel-running":
            for other in others:
                if other.id < self.run.id:
                    reason = f"cancelled by run {self.run.id} of concurrency group {group!r}"
                    with contextlib.suppress(PermanentError):  # finished meanwhile
                        await control.cancel(
                            self.store, other.id, reason=reason, reporter=self.engine.reporter
                        )
        return None

    async def _heartbeat(self) -> None:
        options = self.engine.options
        while True:
            await asyncio.sleep(options.lease / 3)
            kept = await self.store.extend_leases(options.node, [self.run.id], options.lease)
            current = await self.store.get_run(self.run.id)
            if current is not None and current.status == "cancelled":
                self.cancelled.set()
                return
            if self.run.id not in kept:
                log.warning("lost the lease of run %d; stopping here", self.run.id)
                self.lease_lost = True
                self.cancelled.set()
                return

    # -- the DAG ----------------------------------------------------------------------------------
    async def _loop(self) -> bool:
        """Start what is ready until nothing more can start; True when the workflow timed out."""
        running: dict[str, asyncio.Task[None]] = {}
        deadline = None
        if self.workflow.timeout:
            deadline = (self.run.started_at or self.engine.clock()) + self.workflow.timeout
        cancel = asyncio.create_task(self.cancelled.wait())
        unavailable: ExecutorUnavailable | None = None
        try:
            while True:
                # only steps whose needs changed are looked at again: O(steps) per run;
                # none once the executor is unavailable (the run pauses when these end)
                while self.candidates and unavailable is None:
                    batch = sorted(self.candidates, key=self.order.__getitem__)
                    self.candidates.clear()
                    for step in (self.steps[sid] for sid in batch):
                        if step.id not in running and await self._ready(step):
                            with logs.context(step=step.id):  # the task copies the context
                                running[step.id] = asyncio.create_task(self._start(step))
                if not running:
                    if unavailable is not None:
                        raise unavailable
                    return False
                timeout = None if deadline is None else max(deadline - self.engine.clock(), 0)
                done, _ = await asyncio.wait(
                    [*running.values(), cancel], timeout=timeout, return_when="FIRST_COMPLETED"
                )
                for step_id, task in list(running.items()):
                    if task in done:
                        del running[step_id]
                        try:
                            task.result()
                        except ExecutorUnavailable as exc:
                            # the steps still in flight finish first: one of them may be the
                            # circuit breaker's trial, and cancelling it would waste its work
                            unavailable = unavailable or exc
                if cancel in done or not done:
                    for task in running.values():
                        task.cancel()
                    await asyncio.gather(*running.values(), return_exceptions=True)
                    return not done
        finally:
            cancel.cancel()
            for task in running.values():  # when this run itself is cancelled (shutdown)
                task.cancel()

    async def _ready(self, step: Step) -> bool:
        """Decide a step that has not started; True when it should start now."""
        current = self.status.get(step.id, "pending")
        if current in graph.DONE:
            return False
        decision = graph.decide(step, self.status, self.upstream[step.id])
        if decision == "wait":
            return False
        if decision == "skip":
            await self._set(step, "skipped")
            return False
        go = await self._prepare(step)
        if go is None:
            return False
        self.go[step.id] = go
        return True

    def _scope(self, step: Step) -> dict[str, Any]:
        upstream = self.upstream[step.id]
        return {
            "inputs": dict(self.run.inputs),
            "trigger": dict(self.run.trigger),
            "run": {
                "id": self.run.id,
                "workflow": self.run.workflow,
                "revision": self.run.revision,
            },
            "steps": {
                sid: {"outputs": dict(self.records[sid].outputs or {}), "status": self.status[sid]}
                for sid in upstream
                if sid in self.records
            },
        }

    async def _prepare(self, step: Step) -> _Go | None:
        scope = self._scope(step)
        try:
            if step.when is not None and not await self._when(step, scope):
                await self._set(step, "skipped")
                return None
            inputs = render(dict(step.with_), scope)
        except EvaluationError as exc:
            await self._log(step.id, f"[runner] {exc}\n")
            await self._set(step, "failed", error=str(exc))
            return None
        digest = inputs_digest(inputs)
        if step.approval is None and self._agent(step).risk != "approval_required":
            return _Go(inputs, digest)
        return await self._gate(step, inputs, digest)

    async def _when(self, step: Step, scope: dict[str, Any]) -> bool:
        assert step.when is not None
        try:
            return evaluate(step.when, scope) is True
        except EvaluationError as exc:
            if not exc.missing:
                raise
            await self._log(step.id, f"[runner] when is false: {exc}\n")
            return False

    async def _gate(self, step: Step, inputs: dict[str, Any], digest: str) -> _Go | None:
        approvals = [
            a for a in await self.store.list_approvals(run_id=self.run.id) if a.step_id == step.id
        ]
        record = self.records.get(step.id)
        spent = record.finished_at if record is not None else None
        usable = [
            a
            for a in approvals
            if a.inputs_digest == digest
            and a.sha == self.run.trigger.get("sha")
            and (spent is None or a.status == "pending" or (a.decided_at or 0) > spent)
        ]
        latest = usable[-1] if usable else None
        if latest is None or latest.status == "pending":
            if latest is None:
                await self._open_gate(step, digest)
            await self._set(step, "waiting_approval", inputs_digest=digest)
            return None
        if latest.status == "approved" or (
            latest.status == "expired" and latest.policy.on_timeout == "approve"
        ):
            return _Go(inputs, digest)
        if latest.status == "expired" and latest.policy.on_timeout == "fail":
            await self._set(step, "failed", error="the approval timed out (on_timeout: fail)")
        else:
            await self._set(step, "rejected", error=f"the approval was {latest.status}")
        return None

    async def _open_gate(self, step: Step, digest: str) -> Approval:
        policy = step.approval or ApprovalPolicy()  # implied by the agent's risk
        now = self.engine.clock()
        gate = await self.store.create_approval(
            Approval(
                id=0,
                run_id=self.run.id,
                step_id=step.id,
                status="pending",
                policy=policy,
                sha=self.run.trigger.get("sha"),
                revision=self.run.revision,
                inputs_digest=digest,
                requested_at=now,
                deadline=now + policy.timeout if policy.timeout else None,
            )
        )
        await self._log(step.id, f"[runner] waiting for approval {gate.id}\n")
        return gate

    def _agent(self, step: Step) -> Agent:
        return self.agents[step.agent]

    # -- one step ---------------------------------------------------------------------------------
    async def _start(self, step: Step) -> None:
        with tracing.span(f"step {step.id}", step=step.id, agent=step.agent):
            await self._attempts(step)

    async def _granted(self, step: Step, agent: Agent) -> tuple[Granted, tuple[str, ...]] | None:
        """The secrets the step's agent is granted here, and the values every log masks; None
        (the step failed, saying why) when the configuration no longer allows what the agent
        asks for (it changed since the agent's revision was applied)."""
        if not agent.builtin and not Path(agent.directory).is_absolute():
            # the program of the run's revision is not known here: never run whatever folder
            # of that name the working directory holds
            error = (
                f"the program of agent {agent.name!r} at revision {self.run.revision[:12]} is not"
                f" available in this process (source {self.run.source!r} is not configured"
                " here): continue the run where that source is configured (runner serve)"
            )
            await self._log(step.id, f"[runner] not started: {error}\n")
            await self._set(step, "failed", error=error, finished_at=self.engine.clock())
            return None
        store = self.engine.options.secrets
        if store is None:
            return Granted(), ()
        granted = store.for_step(agent, self.workflow.name, self.run.source)
        network = store.network_problem(agent)
        for note in granted.notes:
            await self._log(step.id, f"[runner] {note}\n")
        problems = [*granted.problems, *([network] if network else [])]
        if problems:
            error = "; ".join(problems)
            await self._log(step.id, f"[runner] not started: {error}\n")
            await self._set(step, "failed", error=error, finished_at=self.engine.clock())
            return None
        return granted, tuple(store.masked())

    async def _attempts(self, step: Step) -> None:
        go = self.go.pop(step.id)
        agent = self._agent(step)
        allowed = await self._granted(step, agent)
        if allowed is None:
            return
        granted, masked = allowed
        record = self.records.get(step.id)
        attempt = record.attempt if record else 0
        if record is not None and record.started_at and record.finished_at is None:
            await self._log(
                step.id, "[runner] the runner stopped during this step; running it again\n"
            )
        result = None
        for retry in range(step.retry.max + 1):
            attempt += 1
            await self._set(
                step,
                "running",
                attempt=attempt,
                started_at=self.engine.clock(),
                finished_at=None,
                inputs_digest=go.digest,
            )
            spec = StepSpec(
                run_id=self.run.id,
                step_id=step.id,
                attempt=attempt,
                agent=self._bounded(agent),
                inputs=go.inputs,
                workspace=self.workspace,
                timeout=self._timeout(
                    agent, step.timeout or agent.timeout or self.engine.options.default_timeout
                ),
                secrets=granted.values,
                masked=masked,
                env={"RUNNER_TRIGGER": json.dumps(dict(self.run.trigger))},
            )
            async with self.engine.slots:
                try:
                    result = await self.engine.executor.run_step(spec, self._sink(step.id))
                except ExecutorUnavailable:  # not started after all: no "interrupted" note
                    await self._set(step, "pending", attempt=attempt - 1, started_at=None)
                    raise
            if result.ok:
                await self._set(
                    step, "succeeded", outputs=result.outputs, finished_at=self.engine.clock()
                )
                return
            if retry < step.retry.max:
                delay = step.retry.backoff * 2**retry * (1 + random.uniform(0, 0.25))
                await self._log(
                    step.id,
                    f"[runner] attempt {attempt} failed ({result.error});"
                    f" retrying in {delay:.1f}s\n",
                )
                await asyncio.sleep(delay)
        assert result is not None
        await self._set(step, "failed", error=result.error, finished_at=self.engine.clock())

    def _policy(self, agent: Agent) -> AgentPolicy | None:
        """The ceilings a repo-local agent runs under (the configuration's, now): a revision
        applied under laxer ones asks for no more than they allow."""
        store = self.engine.options.secrets
        return None if agent.builtin or store is None else store.policy

    def _bounded(self, agent: Agent) -> Agent:
        policy = self._policy(agent)
        if policy is None:
            return agent
        changes: dict[str, Any] = {}
        if policy.max_pids is not None and (agent.pids or 0) > policy.max_pids:
            changes["pids"] = policy.max_pids
        if policy.max_memory is not None and agent.memory:
            with contextlib.suppress(ValueError, KeyError):
                if memory_bytes(agent.memory) > policy.max_memory:
                    changes["memory"] = str(policy.max_memory)
        return replace(agent, **changes) if changes else agent

    def _timeout(self, agent: Agent, timeout: float) -> float:
        policy = self._policy(agent)
        if policy is None or policy.max_timeout is None:
            return timeout
        return min(timeout, policy.max_timeout)

    def _sink(self, step_id: str) -> Callable[[bytes], Any]:
        async def sink(data: bytes) -> None:
            await self.store.append_log(self.run.id, step_id, data)

        return sink

    async def _log(self, step_id: str, text: str) -> None:
        await self.store.append_log(self.run.id, step_id, text.encode())

    async def _set(self, step: Step, status: StepStatus, **changes: Any) -> None:
        record = self.records.get(step.id) or StepRun(
            run_id=self.run.id, step_id=step.id, status=status
        )
        if status in graph.DONE and "finished_at" not in changes:
            changes["finished_at"] = self.engine.clock()
        record = replace(record, status=status, **changes)
        self.records[step.id] = record
        self.status[step.id] = status
        if status in graph.DONE:
            self.candidates.update(self.dependents.get(step.id, ()))
        await self.store.save_step(record)
        if status in graph.DONE and record.started_at is not None:
            metrics.step_finished(
                self.run.workflow, step.agent, status, record.started_at, record.finished_at
            )
        if self.engine.listener is not None:
            self.engine.listener(self.run.id, step.id, status)
