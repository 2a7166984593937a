"""`runner run`, `runs`, `show`, `logs`, `approve` and `cancel`: running workflows and their
history."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import click
import yaml
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from runner.approvals import Channel, LocalDirectory, NotAllowed, decide
from runner.cli_common import config_option, output_option, when
from runner.dag import control
from runner.errors import PermanentError, TransientError, UsageError
from runner.forges.api import run_authors
from runner.model import Approval, Run, RunRequest, RunStatus, Workflow
from runner.reporting import Reporter
from runner.revisions import content_revision, local_source
from runner.services import Runtime, agent_policy, forge_clients, image_policy, runtime
from runner.settings import load_settings
from runner.spec.compile import compile_files
from runner.spec.inputs import InputsInvalid, resolve_inputs
from runner.spec.repo import builtin_agents, repo_files
from runner.web.views import decision_view
from runner.workspace import head_of

EXIT = {"succeeded": 0, "waiting_approval": 3}
STYLE = {
    "succeeded": "green",
    "failed": "red",
    "rejected": "red",
    "running": "yellow",
    "waiting_approval": "magenta",
    "skipped": "dim",
    "cancelled": "dim",
    "pending": "dim",
    "queued": "dim",
}


def actor() -> str:
    return os.environ.get("RUNNER_USER") or getpass.getuser()


def _styled(status: str) -> str:
    return f"[{STYLE.get(status, 'white')}]{status}[/]"


class LiveSteps:
    """The run's DAG as a table of steps, redrawn on every transition."""

    def __init__(self, workflow: Workflow, console: Console) -> None:
        self.workflow = workflow
        self.status: dict[str, str] = {s.id: "pending" for s in workflow.steps}
        self.live = Live(self.table(), console=console, auto_refresh=False, transient=False)

    def table(self) -> Table:
        table = Table(title=f"workflow {self.workflow.name}", title_justify="left")
        for column in ("step", "agent", "needs", "status"):
            table.add_column(column)
        for step in self.workflow.steps:
            status = self.status[step.id]
            table.add_row(step.id, step.agent, ", ".join(step.needs) or "-", _styled(status))
        return table

    def __call__(self, run_id: int, step_id: str, status: str) -> None:
        self.status[step_id] = status
        self.live.update(self.table(), refresh=True)


def _parse_inputs(pairs: tuple[str, ...]) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--input {pair!r}: write key=value")
        inputs[key] = yaml.safe_load(raw) if raw else ""
    return inputs


async def _waiting_hint(rt: Runtime, run: Run, console: Console) -> None:
    for gate in await rt.store.list_approvals(run_id=run.id, status="pending"):
        policy = gate.policy
        who = ", ".join(policy.approvers) or "anyone with write access"
        users = [a for a in policy.approvers if not a.startswith("@")]
        name = users[0] if users else "<approver>"
        console.print(
            f"Run {run.id} waits for approval {gate.id} of step [bold]{gate.step_id}[/]: "
            f"{policy.required} approval(s) from {escape(who)}"
            + (
                ""
                if policy.allow_author
                else f" (not {escape(str(run.trigger.get('actor')))}, who started it)"
            ),
            highlight=False,
            soft_wrap=True,
        )
        console.print(
            f"  approve: RUNNER_USER={name} runner approve {run.id} --step {gate.step_id}"
        )
        console.print(
            f"  reject:  RUNNER_USER={name} runner approve {run.id} --step {gate.step_id} --reject"
        )


async def _drive(
    rt: Runtime, run: Run, workflow: Workflow, console: Console, view: LiveSteps
) -> Run:
    for record in await rt.store.get_steps(run.id):
        view.status[record.step_id] = record.status
    with view.live:
        view.live.update(view.table(), refresh=True)
        result = await rt.engine.run(run.id)
    console.line()
    console.print(
        f"run {result.id}: {_styled(result.status)}"
        + (f" ({escape(result.error)})" if result.error else "")
    )
    waiting = _wait_text(result)
    if waiting is not None and result.status == "queued":
        console.print(escape(waiting), highlight=False, soft_wrap=True)
    if result.status == "waiting_approval":
        await _waiting_hint(rt, result, console)
    return result


def _exit(run: Run) -> None:
    sys.exit(EXIT.get(run.status, 1))


@click.command()
@click.argument("workflow")
@click.option(
    "--repo", "repo", metavar="PATH", help="Workflows repo (default: the configured local source)."
)
@click.option(
    "--input", "inputs", multiple=True, metavar="KEY=VALUE", help="A run input (repeatable)."
)
@click.option("--workspace", metavar="DIR", help="Git repository the agents work on, at its HEAD.")
@config_option
def run(
    workflow: str,
    repo: str | None,
    inputs: tuple[str, ...],
    workspace: str | None,
    config_path: str | None,
) -> None:
    """Run WORKFLOW once, in this process, showing each step's state.

    Exit 0 when it succeeds, 1 when it fails, 3 when it waits for an approval (the run stays
    stored; the command to approve it is printed).
    """
    settings = load_settings(config_path)
    try:
        given = _parse_inputs(inputs)
    except UsageError as exc:
        raise click.UsageError(str(exc)) from None
    root = Path(repo) if repo else _default_repo(settings.sources)
    files = repo_files(root, "")
    compiled = compile_files(
        files,
        builtins=builtin_agents(),
        images=image_policy(settings),
        policy=agent_policy(settings).for_source(local_source(root)),
    )
    console = Console()
    if compiled.errors:
        for error in compiled.errors:
            console.print(escape(f"{root}/{error}"), highlight=False, soft_wrap=True)
        raise click.ClickException(f"{root} is not valid: fix the errors above first")
    if workflow not in compiled.bundle.workflows:
        known = ", ".join(sorted(compiled.bundle.workflows))
        raise click.UsageError(f"no workflow {workflow!r} in {root}; there are: {known}")
    spec = compiled.bundle.workflows[workflow]
    try:
        resolved = resolve_inputs(spec.inputs, given)
    except InputsInvalid as exc:
        raise click.UsageError(str(exc)) from None
    trigger: dict[str, Any] = {"event": "manual", "actor": actor()}
    if workspace:
        try:
            sha, ref = head_of(Path(workspace))
        except PermanentError as exc:
            raise click.UsageError(str(exc)) from None
        path = Path(workspace).resolve()
        trigger |= {"repository": path.name, "ref": ref, "sha": sha, "clone_url": str(path)}
    result = asyncio.run(_run(settings, root, compiled, spec, resolved, trigger, console))
    _exit(result)


def _default_repo(sources: tuple[Mapping[str, Any], ...]) -> Path:
    for source in sources:
        url = str(source.get("url", ""))
        local = Path(url.removeprefix("file://"))
        if local.is_dir():
            return local / str(source.get("path", "."))
    raise click.UsageError(
        "give the workflows repo with --repo PATH (no local source is configured)"
    )


async def _run(
    settings: Any,
    root: Path,
    compiled: Any,
    spec: Workflow,
    inputs: dict[str, Any],
    trigger: dict[str, Any],
    console: Console,
) -> Run:
    view = LiveSteps(spec, console)
    async with runtime(settings, listener=view) as rt:
        source = local_source(root)
        revision = content_revision(compiled.documents)
        await rt.store.apply_revision(source, revision, compiled.documents)
        run, _ = await rt.store.request_run(
            RunRequest(
                workflow=spec.name,
                source=source,
                revision=revision,
                idempotency_key=f"manual:{uuid.uuid4()}",
                trigger=trigger,
                inputs=inputs,
                concurrency_group=None,
            )
        )
        held = await rt.store.acquire_run(rt.node, run.id, rt.engine.options.lease)
        if held is None:
            raise click.ClickException(f"run {run.id} was taken by another runner")
        console.print(f"run {run.id} of {spec.name} (revision {revision})", highlight=False)
        return await _drive(rt, held, spec, console, view)


@click.command()
@click.argument("run_id", type=int)
@click.option("--step", metavar="STEP", help="Only this step's approval.")
@click.option("--reject", is_flag=True, help="Reject instead of approving.")
@click.option("--comment", default="", help="Why (recorded in the audit trail).")
@config_option
def approve(
    run_id: int, step: str | None, reject: bool, comment: str, config_path: str | None
) -> None:
    """Decide a pending approval of RUN as $RUNNER_USER (default: your user name), under the
    same policy as PR comments; then continue the run here unless a service holds it."""
    settings = load_settings(config_path)
    result = asyncio.run(_approve(settings, run_id, step, reject, comment))
    if result is not None:
        _exit(result)


async def _approve(
    settings: Any, run_id: int, step: str | None, reject: bool, comment: str
) -> Run | None:
    console = Console()
    async with runtime(settings) as rt:
        run = await rt.store.get_run(run_id)
        if run is None:
            raise click.ClickException(f"there is no run {run_id}")
        gates = [
            g
            for g in await rt.store.list_approvals(run_id=run_id, status="pending")
            if step is None or g.step_id == step
        ]
        if not gates and run.status == "cancelled":  # its gates were closed with it
            raise click.ClickException(
                f"run {run_id} was cancelled ({run.error}): nothing waits for approval"
            )
        if not gates:
            raise click.ClickException(
                f"run {run_id} has no pending approval" + (f" for step {step!r}" if step else "")
            )
        who = await LocalDirectory().identity(actor())
        decided = False
        clients, _ = forge_clients(rt.settings)
        try:
            for gate in gates:
                try:  # who the forge says authored the change, as for a comment
                    authors = await run_authors(run, gate.sha, clients)
                    outcome = await decide(
                        rt.store,
                        gate.id,
                        who=who,
                        decision="reject" if reject else "approve",
                        channel=Channel(via="cli"),
                        comment=comment,
                        authors=authors,
                    )
                except NotAllowed as exc:
                    raise click.ClickException(f"refused: {exc}") from None
                except TransientError as exc:
                    raise click.ClickException(
                        f"cannot tell who authored the change ({exc}); try again"
                    ) from None
                console.print(
                    f"approval {gate.id} (step {gate.step_id}): {outcome.message}",
                    highlight=False,
                )
                decided = decided or outcome.status != "pending"
        finally:
            for client in clients.values():
                await client.close()
        if not decided:
            return None
        held = await rt.store.acquire_run(rt.node, run_id, rt.engine.options.lease)
        if held is None:
            console.print(f"run {run_id} continues in the runner service that holds it")
            return None
        bundle = await rt.engine.loader.bundle(held.source, held.revision)
        view = LiveSteps(bundle.workflows[held.workflow], console)
        rt.engine.listener = view
        return await _drive(rt, held, bundle.workflows[held.workflow], console, view)


@click.command()
@click.argument("run_id", type=int)
@click.option("--reason", default="", help="Why (shown on the run and its pull request).")
@config_option
def cancel(run_id: int, reason: str, config_path: str | None) -> None:
    """Cancel RUN, queued, running or waiting for an approval, as $RUNNER_USER: its pending
    approvals close, and the forge it came from gets its final status and PR comment. A
    service working on it stops its steps."""
    settings = load_settings(config_path)
    run = asyncio.run(_cancel(settings, run_id, reason))
    Console().print(
        f"run {run.id} of {run.workflow}: {_styled(run.status)} ({escape(run.error or '')})"
    )


async def _cancel(settings: Any, run_id: int, reason: str) -> Run:
    why = f"cancelled by {actor()} (CLI)" + (f": {reason}" if reason else "")
    clients, reporting = forge_clients(settings)
    try:
        async with runtime(settings) as rt:
            try:
                return await control.cancel(
                    rt.store, run_id, reason=why, reporter=Reporter(reporting)
                )
            except PermanentError as exc:
                raise click.ClickException(str(exc)) from None
    finally:
        for client in clients.values():
            await client.close()


def _run_json(run: Run) -> dict[str, Any]:
    return {
        "id": run.id,
        "workflow": run.workflow,
        "status": run.status,
        "revision": run.revision,
        "source": run.source,
        "trigger": dict(run.trigger),
        "inputs": dict(run.inputs),
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "error": run.error,
        "wait": dict(run.wait) if run.wait is not None else None,
    }


def _wait_text(run: Run) -> str | None:
    """What a waiting run waits for, in a line: `runner show` and `runner run` print it."""
    wait = run.wait
    if wait is None:
        return None
    text = f"  waits for {wait.get('for')} since {when(float(wait.get('since') or 0))}: "
    text += str(wait.get("reason", ""))
    if wait.get("next_attempt") is not None:
        text += f" (next attempt at {when(float(wait['next_attempt']))})"
    return text


@click.command()
@click.option("--workflow", help="Only runs of this workflow.")
@click.option("--status", "statuses", multiple=True, help="Only runs in this status (repeatable).")
@click.option("--limit", default=30, show_default=True)
@output_option
@config_option
def runs(
    workflow: str | None,
    statuses: tuple[str, ...],
    limit: int,
    output: str,
    config_path: str | None,
) -> None:
    """List runs, newest first."""
    settings = load_settings(config_path)

    async def listing() -> list[Run]:
        async with runtime(settings) as rt:
            wanted = cast(list[RunStatus], list(statuses)) or None
            return await rt.store.list_runs(workflow=workflow, status=wanted, limit=limit)

    found = asyncio.run(listing())
    if output == "json":
        click.echo(json.dumps([_run_json(r) for r in found], indent=2))
        return
    table = Table()
    for column in ("run", "workflow", "status", "created", "actor"):
        table.add_column(column)
    for r in found:
        table.add_row(
            str(r.id),
            r.workflow,
            _styled(r.status),
            when(r.created_at),
            str(r.trigger.get("actor", "-")),
        )
    Console().print(table)


@click.command()
@click.argument("run_id", type=int)
@output_option
@config_option
def show(run_id: int, output: str, config_path: str | None) -> None:
    """Show a run: its steps, outputs and approvals."""
    settings = load_settings(config_path)

    async def details() -> tuple[Run | None, list[Any], list[Approval], dict[int, list[Any]]]:
        async with runtime(settings) as rt:
            found = await rt.store.get_run(run_id)
            approvals = await rt.store.list_approvals(run_id=run_id)
            decisions = {a.id: await rt.store.decisions(a.id) for a in approvals}
            return found, await rt.store.get_steps(run_id), approvals, decisions

    found, steps, approvals, decisions = asyncio.run(details())
    if found is None:
        raise click.ClickException(f"there is no run {run_id}")
    if output == "json":
        data = _run_json(found) | {
            "steps": [
                {
                    "id": s.step_id,
                    "status": s.status,
                    "attempt": s.attempt,
                    "outputs": s.outputs,
                    "error": s.error,
                }
                for s in steps
            ],
            "approvals": [
                {
                    "id": a.id,
                    "step": a.step_id,
                    "status": a.status,
                    "sha": a.sha,
                    "revision": a.revision,
                    "inputs_digest": a.inputs_digest,
                    "requested_at": a.requested_at,
                    "decided_at": a.decided_at,
                    "decisions": [decision_view(d) | {"at": d.created_at} for d in decisions[a.id]],
                }
                for a in approvals
            ],
        }
        click.echo(json.dumps(data, indent=2))
        return
    console = Console()
    console.print(
        f"run {found.id} of {found.workflow}: {_styled(found.status)}"
        + (f" ({escape(found.error)})" if found.error else "")
    )
    console.print(
        f"  revision {found.revision}; started by {found.trigger.get('actor', '-')}"
        f" at {when(found.created_at)}",
        highlight=False,
    )
    waiting = _wait_text(found)
    if waiting is not None:
        console.print(escape(waiting), highlight=False, soft_wrap=True)
    table = Table()
    for column in ("step", "status", "attempt", "error"):
        table.add_column(column)
    for s in steps:
        table.add_row(s.step_id, _styled(s.status), str(s.attempt), escape(s.error or ""))
    console.print(table)
    for a in approvals:
        console.print(f"approval {a.id} for step {a.step_id}: {_styled(a.status)}", highlight=False)
        for d in decisions[a.id]:
            channel = f"{d.via} on {d.forge}" if d.forge else d.via
            console.print(
                f"  {d.decision} by {d.actor} via {channel} at {when(d.created_at)}"
                f" for {(d.sha or '-')[:12]} {escape(d.comment)}"
                + (f" ({escape(d.url)})" if d.url else ""),
                highlight=False,
                soft_wrap=True,
            )


@click.command()
@click.argument("run_id", type=int)
@click.argument("step", required=False)
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the run finishes.")
@config_option
def logs(run_id: int, step: str | None, follow: bool, config_path: str | None) -> None:
    """Print the logs of a run's steps (or of one STEP)."""
    settings = load_settings(config_path)
    asyncio.run(_logs(settings, run_id, step, follow))


async def _logs(settings: Any, run_id: int, step: str | None, follow: bool) -> None:
    offsets: dict[str, int] = {}
    out = sys.stdout.buffer
    async with runtime(settings) as rt:
        while True:
            run = await rt.store.get_run(run_id)
            if run is None:
                raise click.ClickException(f"there is no run {run_id}")
            for record in await rt.store.get_steps(run_id):
                if step is not None and record.step_id != step:
                    continue
                while True:
                    part = await rt.store.read_log(
                        run_id, record.step_id, offset=offsets.get(record.step_id, 0)
                    )
                    if not part.data:
                        break
                    if step is None:
                        out.write(
                            b"".join(
                                f"[{record.step_id}] ".encode() + line
                                for line in part.data.splitlines(keepends=True)
                            )
                        )
                    else:
                        out.write(part.data)
                    offsets[record.step_id] = part.next_offset
            out.flush()
            if not follow or run.status in (
                "succeeded",
                "failed",
                "cancelled",
                "rejected",
                "skipped",
                "waiting_approval",
            ):
                return
            await asyncio.sleep(0.5)


def register(group: click.Group) -> None:
    for command in (run, runs, show, logs, approve, cancel):
        group.add_command(command)
