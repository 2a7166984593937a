"""`runner serve`, `runner reconcile`, `runner sources` and `runner workflows`."""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from runner import logs, tracing
from runner.cli_common import config_option, output_option, when
from runner.errors import PermanentError, TransientError, UsageError
from runner.model import SourceStatus
from runner.services import (
    agent_policy,
    build_sources,
    image_policy,
    runtime,
    secret_store,
    serve,
)
from runner.settings import Settings, load_settings
from runner.source.reconciler import Reconciler


@click.command("serve")
@config_option
@click.option(
    "--role", type=click.Choice(["all", "web", "worker"]), default="all", show_default=True
)
@click.option(
    "--grace",
    default=30.0,
    show_default=True,
    help="Seconds running steps get to finish on SIGTERM.",
)
def serve_command(config_path: str | None, role: str, grace: float) -> None:
    """The service: reconcilers and scheduler and workers (worker), HTTP (web), or all."""
    settings = load_settings(config_path)
    logs.configure(
        format=settings.logging.format,
        level=settings.logging.level,
        secrets=secret_store(settings).masked(),  # its own credentials and granted values
    )
    tracing.setup()  # when OTEL_EXPORTER_OTLP_ENDPOINT is set and the otel extra installed
    try:
        asyncio.run(_serve(settings, role, grace))
    except UsageError as exc:
        raise click.UsageError(str(exc)) from None


async def _serve(settings: Settings, role: str, grace: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if role in ("all", "web"):
        click.echo(
            f"runner listening on http://{settings.listen.host}:{settings.listen.port}", err=True
        )
    await serve(settings, role=role, stop=stop, grace=grace)
    click.echo("runner stopped", err=True)


@click.command("reconcile")
@config_option
@click.option(
    "--once",
    is_flag=True,
    help="One pass in this process, then exit (what this command does; a running service also "
    "follows the applied revision at its next pass, or at once through "
    "POST /api/sources/NAME/reconcile).",
)
def reconcile_command(config_path: str | None, once: bool) -> None:
    """Reconcile the configured sources now, once, and print what happened."""
    settings = load_settings(config_path)
    failed = asyncio.run(_reconcile(settings))
    raise SystemExit(1 if failed else 0)


async def _reconcile(settings: Settings) -> bool:
    failed = False
    sources = build_sources(settings)
    async with runtime(settings) as rt:
        for source in sources:
            try:
                reconciler = Reconciler(
                    rt.store,
                    source,
                    images=image_policy(settings),
                    policy=agent_policy(settings),
                )
                result = await reconciler.reconcile()
            except (TransientError, PermanentError) as exc:
                click.echo(f"{source.name}: fetch failed: {exc}")
                failed = True
                continue
            if result.applied:
                click.echo(f"{source.name}: applied {result.revision}")
            elif result.errors:
                click.echo(
                    f"{source.name}: {result.revision} has {result.errors} error(s);"
                    " see runner sources"
                )
                failed = True
            else:
                click.echo(f"{source.name}: up to date at {result.revision}")
    return failed


def _source_json(status: SourceStatus) -> dict[str, Any]:
    return {
        "name": status.name,
        "applied_revision": status.applied_revision,
        "applied_at": status.applied_at,
        "attempted_revision": status.attempted_revision,
        "attempted_at": status.attempted_at,
        "conditions": [
            {"type": c.type, "status": c.status, "reason": c.reason, "message": c.message}
            for c in status.conditions
        ],
        "errors": list(status.errors),
        "last_fetch_at": status.last_fetch_at,
        "last_fetch_duration": status.last_fetch_duration,
    }


@click.command("sources")
@config_option
@output_option
def sources_command(config_path: str | None, output: str) -> None:
    """Sources: applied and attempted revision, conditions, and the errors of a refused one."""
    settings = load_settings(config_path)

    async def statuses() -> list[SourceStatus]:
        async with runtime(settings) as rt:
            return await rt.store.list_source_statuses()

    found = asyncio.run(statuses())
    if output == "json":
        click.echo(json.dumps([_source_json(s) for s in found], indent=2))
        return
    console = Console()
    table = Table()
    for column in ("source", "applied", "attempted", "ready", "message", "last fetch"):
        table.add_column(column)
    for s in found:
        ready = next((c for c in s.conditions if c.type == "Ready"), None)
        table.add_row(
            s.name,
            (s.applied_revision or "-")[:12],
            (s.attempted_revision or "-")[:12],
            ("[green]yes[/]" if ready.status else f"[red]no[/] ({ready.reason})") if ready else "-",
            escape(ready.message if ready else ""),
            when(s.last_fetch_at),
        )
    console.print(table)
    for s in found:
        for e in s.errors:
            console.print(
                escape(f"{s.name}: {e['path']}:{e['line']}:{e['column']}: {e['message']}"),
                highlight=False,
                soft_wrap=True,
            )


@click.command("workflows")
@config_option
@output_option
def workflows_command(config_path: str | None, output: str) -> None:
    """Applied workflows, with the source and revision they come from."""
    settings = load_settings(config_path)

    async def applied() -> list[dict[str, Any]]:
        rows = []
        async with runtime(settings) as rt:
            for status in await rt.store.list_source_statuses():
                revision, documents = await rt.store.applied_documents(status.name)
                for doc in documents:
                    if doc.kind == "Workflow":
                        spec = doc.content.get("spec", {})
                        triggers = [next(iter(t)) for t in spec.get("triggers", [])]
                        rows.append(
                            {
                                "name": doc.name,
                                "source": status.name,
                                "revision": revision,
                                "path": doc.path,
                                "triggers": triggers,
                                "digest": doc.digest,
                            }
                        )
        return rows

    rows = asyncio.run(applied())
    if output == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table()
    for column in ("workflow", "source", "revision", "triggers", "file"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["name"],
            row["source"],
            str(row["revision"])[:12],
            ", ".join(row["triggers"]),
            row["path"],
        )
    Console().print(table)


def register(group: click.Group) -> None:
    for command in (serve_command, reconcile_command, sources_command, workflows_command):
        group.add_command(command)
