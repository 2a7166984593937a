"""Prometheus metrics (prometheus-client), all named `runner_*` per Prometheus conventions.

Counters and histograms are updated where things happen; the gauges that describe stored state
(queue depth, waiting approvals, applied revisions, executor health) are refreshed from the
store when `/metrics` is scraped, so every replica reports the same shared truth. With
`PROMETHEUS_MULTIPROC_DIR` set (several web processes behind one port), the multi-process
collector of prometheus-client merges the processes' files.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from runner.executors.base import Health
from runner.store.base import Store

DURATIONS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

RUNS = Counter(
    "runner_runs_total", "Runs finished, by workflow and outcome.", ["workflow", "outcome"]
)
RUN_DURATION = Histogram(
    "runner_run_duration_seconds",
    "Time from a run's start to its end, by workflow.",
    ["workflow"],
    buckets=DURATIONS,
)
STEP_DURATION = Histogram(
    "runner_step_duration_seconds",
    "Time a step ran, by workflow, agent and outcome.",
    ["workflow", "agent", "outcome"],
    buckets=DURATIONS,
)
QUEUE = Gauge("runner_runs_queued", "Runs waiting for a worker.", multiprocess_mode="mostrecent")
RUNNING = Gauge("runner_runs_running", "Runs being worked on.", multiprocess_mode="mostrecent")
WAITING = Gauge(
    "runner_approvals_waiting",
    "Approval gates waiting for a decision.",
    multiprocess_mode="mostrecent",
)
WAITING_AGE = Gauge(
    "runner_approvals_oldest_wait_seconds",
    "How long the oldest waiting approval gate has waited (0 when none waits).",
    multiprocess_mode="mostrecent",
)
RECONCILES = Counter(
    "runner_reconcile_total", "Reconcile passes, by source and outcome.", ["source", "outcome"]
)
RECONCILE_DURATION = Histogram(
    "runner_reconcile_duration_seconds",
    "Duration of a reconcile pass, by source.",
    ["source"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
SOURCE_READY = Gauge(
    "runner_source_ready",
    "1 when the source's last pass left it Ready (its last commit applied), else 0.",
    ["source"],
    multiprocess_mode="mostrecent",
)
APPLIED = Gauge(
    "runner_source_applied_revision_info",
    "The revision each source has applied (value 1).",
    ["source", "revision"],
    multiprocess_mode="mostrecent",
)
DELIVERIES = Counter(
    "runner_webhook_deliveries_total",
    "Webhook deliveries, by forge, event and result (accepted, duplicate, ping, "
    "bad_signature, too_large, unsupported_media_type, bad_request, unknown_forge, invalid).",
    ["forge", "event", "result"],
)
RATE_LIMITED = Counter(
    "runner_rate_limited_total", "Requests refused with 429, by endpoint class.", ["endpoint_class"]
)
EXECUTOR_UP = Gauge(
    "runner_executor_up",
    "1 when the executor's engine answers its health check, else 0.",
    ["executor"],
    multiprocess_mode="mostrecent",
)
EXECUTOR_SINCE = Gauge(
    "runner_executor_state_since_timestamp_seconds",
    "Unix time at which the executor's state (its engine up or down, its circuit breaker's "
    "state) last changed.",
    ["executor"],
    multiprocess_mode="mostrecent",
)
CIRCUIT = Gauge(
    "runner_executor_circuit_state",
    "Circuit breaker around the executor: 0 closed, 1 half-open, 2 open.",
    ["executor"],
    multiprocess_mode="mostrecent",
)
STORE_UP = Gauge(
    "runner_store_up",
    "1 when this replica's last scrape read the store's state within its deadline, else 0.",
    multiprocess_mode="mostrecent",
)
FORGE_CALLS = Counter(
    "runner_forge_api_calls_total",
    "Calls to forge APIs, by forge kind and result (ok, client_error, server_error, "
    "rate_limited, transport_error).",
    ["forge", "result"],
)

COMMENT_COMMANDS = Counter(
    "runner_comment_commands_total",
    "Pull-request comments holding commands, by forge and outcome (acted, replayed: the same "
    "comment in another delivery, no_id, no_token).",
    ["forge", "outcome"],
)
DECISIONS = Counter(
    "runner_approval_decisions_total",
    "Approval decisions, by channel (comment, api, cli, timeout) and result (recorded, refused).",
    ["via", "result"],
)
CACHE_REPAIRS = Counter(
    "runner_cache_repairs_total",
    "Damaged caches removed and made again, by kind (mirror: a run repository's mirror, "
    "source: a workflows source's mirror).",
    ["kind"],
)
FORGE_HELD = Counter(
    "runner_forge_api_calls_held_total",
    "Forge API calls not made because the forge's rate limit is spent until its reset.",
    ["forge"],
)
REPORTS_SKIPPED = Counter(
    "runner_forge_reports_skipped_total",
    "Run reports (commit status, pull request comment) not sent again: identical to the last.",
    ["forge"],
)


def cache_repaired(kind: str) -> None:
    CACHE_REPAIRS.labels(kind).inc()


EVENTS = Counter(
    "runner_events_total",
    "Stored deliveries handled by the dispatcher, by result: done, retry (a passing failure;"
    " tried again later), failed (a permanent reason), gave_up (out of attempts).",
    ["result"],
)


def event_handled(result: str) -> None:
    EVENTS.labels(result).inc()


def comment_command(forge: str, outcome: str) -> None:
    COMMENT_COMMANDS.labels(forge, outcome).inc()


def run_finished(
    workflow: str, outcome: str, started: float | None, finished: float | None
) -> None:
    RUNS.labels(workflow, outcome).inc()
    if started is not None and finished is not None:
        RUN_DURATION.labels(workflow).observe(max(0.0, finished - started))


def step_finished(
    workflow: str, agent: str, outcome: str, started: float | None, finished: float | None
) -> None:
    if started is not None and finished is not None:
        STEP_DURATION.labels(workflow, agent, outcome).observe(max(0.0, finished - started))


_delivery_children: dict[tuple[str, str, str], Any] = {}


def delivery(forge: str, event: str, result: str) -> None:
    key = (forge, event or "unknown", result)
    child = _delivery_children.get(key)
    if child is None:  # labels() validates and locks: once per combination, not per delivery
        child = _delivery_children[key] = DELIVERIES.labels(*key)
    child.inc()


def forge_call(forge: str, status: int | None) -> None:
    if status is None:
        result = "transport_error"
    elif status == 429:
        result = "rate_limited"
    elif status >= 500:
        result = "server_error"
    elif status >= 400:
        result = "client_error"
    else:
        result = "ok"
    FORGE_CALLS.labels(forge, result).inc()


def waiting(count: int, oldest: float | None) -> None:
    WAITING.set(count)
    WAITING_AGE.set(max(0.0, time.time() - oldest) if oldest is not None else 0.0)


def exposition() -> tuple[bytes, str]:
    """The text exposition of every metric (all processes' in multi-process mode)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


async def refresh(store: Store, executor: str, health: Callable[[], Awaitable[Health]]) -> None:
    """Set the gauges that describe stored state from the store (at scrape time); the
    executor's first, so that a store that is away leaves them current."""
    EXECUTOR_UP.labels(executor).set(1 if (await health()).ok else 0)
    QUEUE.set(await store.count_runs(status=["queued"]))
    RUNNING.set(await store.count_runs(status=["running"]))
    pending = await store.list_approvals(status="pending")
    waiting(len(pending), min((a.requested_at for a in pending), default=None))
    APPLIED.clear()
    for status in await store.list_source_statuses():
        if status.applied_revision:
            APPLIED.labels(status.name, status.applied_revision).set(1)
        ready = any(c.type == "Ready" and c.status for c in status.conditions)
        SOURCE_READY.labels(status.name).set(1 if ready else 0)
