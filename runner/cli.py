"""The `runner` command line. Exit codes: 0 success, 1 failure, 2 usage error."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape

from runner import __version__
from runner.cli_common import config_option, output_option
from runner.errors import SpecError, TransientError, UsageError
from runner.model import Bundle
from runner.settings import DEFAULT_FILE, Settings, load_settings
from runner.spec.compile import compile_files
from runner.spec.plan import AgentChange, Plan, Reach, StepReach, make_plan
from runner.spec.plan_text import (
    GRANTS_TITLE,
    NARROWINGS_TITLE,
    NOTHING_GRANTED,
    agent_file_line,
    grant_lines,
    narrowing_lines,
    printable,
    program_text,
    reach_text,
    step_text,
)
from runner.spec.repo import builtin_agents, load_paths

F = TypeVar("F", bound=Callable[..., Any])


def _usage_errors(func: F) -> F:
    """Turn the runner's UsageError into click's, so that it exits 2 with the message."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UsageError as exc:
            raise click.UsageError(str(exc)) from None

    return wrapper  # type: ignore[return-value]


def _print_errors(errors: list[SpecError], console: Console) -> None:
    for error in errors:
        console.print(escape(str(error)), soft_wrap=True, highlight=False)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="runner")
def cli() -> None:
    """GitOps pipeline runner: workflows declared in git, run as DAGs of agent steps."""


@cli.command()
@click.argument("paths", nargs=-1, required=True)
@click.option(
    "--config",
    "config_path",
    metavar="FILE",
    help="Check against this runner configuration, as its reconciler would: secrets agents "
    "ask for must be granted (secrets:), network allowed (executor.allow_network), limits "
    "within the ceilings, images allowed (executor.images). Default: $RUNNER_CONFIG, or "
    "./runner.yaml when it exists; without one, only the documents themselves are checked.",
)
@output_option
@_usage_errors
def validate(paths: tuple[str, ...], config_path: str | None, output: str) -> None:
    """Validate workflow and agent files, or workflows repo directories.

    Every error is printed as path:line:col: message [JSON pointer]. Exit 1 when there is any.
    """
    found = config_path or os.environ.get("RUNNER_CONFIG") or None
    if found is None and Path(DEFAULT_FILE).is_file():
        found = DEFAULT_FILE
    try:
        if found is None:
            result = load_paths(paths)
        else:
            from runner.services import agent_policy, image_policy

            settings = load_settings(found)
            result = load_paths(paths, images=image_policy(settings), policy=agent_policy(settings))
    except OSError as exc:  # a file that cannot be read: say which, no traceback
        raise UsageError(
            f"{exc.filename or 'a file'}: cannot be read: {exc.strerror or exc}"
        ) from None
    if output == "json":
        click.echo(json.dumps([e.as_dict() for e in result.errors], indent=2))
    else:
        _print_errors(result.errors, Console())
    err = Console(stderr=True)
    if result.errors:
        files = len({e.path for e in result.errors})
        err.print(f"[red]{len(result.errors)} error(s) in {files} file(s)[/red]", highlight=False)
        sys.exit(1)
    local = sum(1 for a in result.bundle.agents.values() if not a.builtin)
    against = (
        f"checked against {found}"
        if found
        else "secrets, network and limits not checked: no configuration (use --config)"
    )
    err.print(
        f"[green]valid:[/green] {len(result.bundle.workflows)} workflow(s), {local} repo agent(s)"
        f" ({escape(against)})",
        highlight=False,
        soft_wrap=True,
    )


def _duration_text(seconds: float | None) -> str:
    if seconds is None:
        return "none"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _reach_json(agent: AgentChange, reach: Reach) -> dict[str, Any]:
    return {
        "agent": agent.name,
        "file": agent.file or None,
        "kind": reach.kind,
        "old": reach.old,
        "new": reach.new,
        "text": reach_text(reach, printable),
    }


def _step_json(agent: AgentChange, step: StepReach) -> dict[str, Any]:
    return {
        "agent": agent.name,
        "file": agent.file or None,
        "kind": "step",
        "workflow": step.workflow,
        "step": step.step,
        "was": step.was,
        "secrets": list(step.secrets),
        "network": step.network,
        "ungated": step.ungated,
        "weakened": list(step.weakened),
        "text": step_text(step, printable),
    }


def _grants_json(agent: AgentChange) -> list[dict[str, Any]]:
    """An agent's widenings, in the order the text sections list them."""
    program = (
        [
            {
                "agent": agent.name,
                "file": agent.file,
                "kind": "program",
                "secrets": list(agent.holds_secrets),
                "network": agent.holds_network,
                "text": program_text(agent, printable),
            }
        ]
        if agent.new_code_holds
        else []
    )
    return (
        [_reach_json(agent, r) for r in agent.widened]
        + [_step_json(agent, s) for s in agent.steps]
        + program
    )


def _plan_json(plan: Plan, against: str | None) -> dict[str, Any]:
    return {
        "against": against,
        "changes": [{"kind": c.kind, "name": c.name, "action": c.action} for c in plan.changes],
        "schedules": [
            {
                "workflow": s.schedule.workflow,
                "cron": s.schedule.cron,
                "timezone": s.schedule.timezone,
                "action": s.action,
                "next_fires": [f.isoformat() for f in s.next_fires],
            }
            for s in plan.schedules
        ],
        "approval_gates": [
            {
                "workflow": g.workflow,
                "step": g.step,
                "required": g.policy.required,
                "approvers": list(g.policy.approvers),
                "allow_author": g.policy.allow_author,
                "timeout": _duration_text(g.policy.timeout) if g.policy.timeout else None,
                "on_timeout": g.policy.on_timeout,
            }
            for g in plan.gates
        ],
        "agents_changed": [
            {"name": a.name, "file": a.file, "action": a.action, "program": a.program}
            for a in plan.agents_changed
        ],
        # Empty exactly when the change grants nothing new: scripts can gate on its length.
        "grants": [entry for a in plan.grants for entry in _grants_json(a)],
        "narrowings": [_reach_json(a, r) for a in plan.narrowings for r in a.narrowed],
    }


_MARKS = {"added": "[green]+[/green]", "changed": "[yellow]~[/yellow]", "removed": "[red]-[/red]"}


def _print_plan(plan: Plan, path: str, against: str | None, console: Console) -> None:
    base = f"git revision {against}" if against else "nothing applied yet"
    console.print(f"Plan for {escape(path)} against {escape(base)}:", highlight=False)
    visible = [c for c in plan.changes if c.action != "unchanged"]
    for c in visible:
        console.print(f"  {_MARKS[c.action]} {c.kind} {c.name} ({c.action})", highlight=False)
    if not visible:
        console.print("  no workflow or agent changes", highlight=False)
    _print_reach(plan, console)
    if plan.schedules:
        console.print("Schedules:", highlight=False)
    for s in plan.schedules:
        mark = _MARKS.get(s.action, " ")
        fires = ", ".join(f.strftime("%Y-%m-%d %H:%M %Z") for f in s.next_fires)
        tail = f"; next: {fires}" if fires else ""
        console.print(
            f"  {mark} {s.schedule.workflow}: {escape(s.schedule.cron)} "
            f"({s.schedule.timezone}){tail}",
            highlight=False,
            soft_wrap=True,
        )
    if plan.gates:
        console.print("Approval gates:", highlight=False)
    for g in plan.gates:
        policy = g.policy
        who = ", ".join(policy.approvers) if policy.approvers else "anyone with write access"
        limit = (
            f"; after {_duration_text(policy.timeout)}: {policy.on_timeout}"
            if policy.timeout
            else ""
        )
        console.print(
            f"  {g.workflow}/{g.step}: {policy.required} approval(s) from {escape(who)}{limit}",
            highlight=False,
            soft_wrap=True,
        )
    console.print(
        f"{plan.count('added')} to add, {plan.count('changed')} to change, "
        f"{plan.count('removed')} to remove.",
        highlight=False,
        soft_wrap=True,
    )


def _print_reach(plan: Plan, console: Console) -> None:
    """The same sections as the PR comment: agent files, what the change grants, and apart
    from it, what it takes away."""
    if plan.agents_changed:
        console.print("Agents changed:", highlight=False)
    for a in plan.agents_changed:
        line = escape(agent_file_line(a, printable))
        console.print(f"  {_MARKS[a.action]} {line}", highlight=False, soft_wrap=True)
    granted = grant_lines(plan, printable)
    if not granted:
        console.print(f"{GRANTS_TITLE}: {NOTHING_GRANTED}", highlight=False, soft_wrap=True)
    else:
        console.print(f"[bold yellow]{GRANTS_TITLE}:[/bold yellow]", highlight=False)
    for line in granted:
        console.print(f"  [yellow]![/yellow] {escape(line)}", highlight=False, soft_wrap=True)
    narrowed = narrowing_lines(plan, printable)
    if narrowed:
        console.print(f"{NARROWINGS_TITLE}:", highlight=False)
    for line in narrowed:
        console.print(f"    {escape(line)}", highlight=False, soft_wrap=True)


@cli.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--against", metavar="REV", help="Git revision to compare with (default: nothing).")
@output_option
@_usage_errors
def plan(path: str, against: str | None, output: str) -> None:
    """Show what applying the workflows repo at PATH would change.

    Without --against, the plan is a first apply; with it, relative to the same folder at REV of
    the enclosing git repository (e.g. HEAD or origin/main).

    Besides workflows, agents, schedules and approval gates, it shows what the change grants:
    every agent that asks for a new secret, gains network access or no longer waits for
    approval, and every step that reaches further through its agent. In --output json these
    are "agents_changed", "grants" (empty when nothing widens) and "narrowings".
    """
    result = load_paths([path])
    if result.errors:
        _print_errors(result.errors, Console())
        Console(stderr=True).print(
            f"[red]{len(result.errors)} error(s): this revision would not be applied[/red]",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)
    old = Bundle()
    if against:
        from runner.source.gittree import files_at  # pygit2 only when a revision is asked for

        old = compile_files(files_at(Path(path), against), builtins=builtin_agents()).bundle
    report = make_plan(result.bundle, old, now=datetime.now(UTC))
    if output == "json":
        click.echo(json.dumps(_plan_json(report, against), indent=2))
    else:
        _print_plan(report, path, against, Console())


@cli.group()
def db() -> None:
    """The database: schema migrations and retention."""


@db.command()
@config_option
@_usage_errors
def migrate(config_path: str | None) -> None:
    """Bring the database schema up to date (runner serve also does this at start)."""
    settings = load_settings(config_path)
    applied = asyncio.run(_migrate(settings))
    for name in applied:
        click.echo(f"applied {name}")
    click.echo("database schema is up to date" + (" (nothing to apply)" if not applied else ""))


async def _migrate(settings: Settings) -> list[str]:
    from runner.store.base import open_store

    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)  # the failure is reported below
    store = open_store(
        settings.database.url,
        pool_size=settings.database.pool_size,
        connect_timeout=settings.database.connect_timeout,
        log_limit=settings.database.log_limit,
    )
    try:
        await store.open()
        return await store.migrate()
    except TransientError as exc:
        raise click.ClickException(f"cannot reach the database: {exc}") from None
    finally:
        await store.close()


@db.command()
@click.option(
    "--older-than",
    required=True,
    metavar="DURATION",
    help="Remove finished runs that finished longer ago than this, e.g. 90d.",
)
@click.option(
    "--keep-last",
    default=10,
    show_default=True,
    type=click.IntRange(min=0),
    help="Keep this many newest finished runs of each workflow, however old.",
)
@config_option
@_usage_errors
def prune(older_than: str, keep_last: int, config_path: str | None) -> None:
    """Remove whole finished runs (steps, logs, approvals and their decisions) and handled
    deliveries older than --older-than: the only way anything leaves the audit trail."""
    from runner.spec.timing import parse_duration

    try:
        age = parse_duration(older_than)
    except ValueError:
        raise UsageError(f"--older-than {older_than!r}: write a duration like 30d or 12h") from None
    settings = load_settings(config_path)
    cutoff = datetime.now(UTC).timestamp() - age
    removed = asyncio.run(_prune(settings, cutoff, keep_last))
    stamp = datetime.fromtimestamp(cutoff, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    click.echo(
        f"retention: removed {removed} finished run(s) that finished before {stamp}"
        f" (kept the newest {keep_last} of each workflow)",
        err=True,
    )


async def _prune(settings: Settings, cutoff: float, keep_last: int) -> int:
    from runner.store.base import open_store

    store = open_store(settings.database.url, pool_size=settings.database.pool_size)
    try:
        await store.open()
        await store.migrate()
        return await store.prune(older_than=cutoff, keep_last=keep_last)
    except TransientError as exc:
        raise click.ClickException(f"cannot reach the database: {exc}") from None
    finally:
        await store.close()


def main() -> None:
    from runner import cli_runs, cli_serve

    # The CLI reports problems itself; library warnings only when asked for.
    logging.basicConfig(
        level=os.environ.get("RUNNER_LOG_LEVEL", "ERROR").upper(),
        format="%(levelname)s %(name)s: %(message)s",
    )
    cli_runs.register(cli)
    cli_serve.register(cli)
    try:
        cli(prog_name="runner")
    except UsageError as exc:  # a command's configuration is wrong: say where, no traceback
        Console(stderr=True).print(f"Error: {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
