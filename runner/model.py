"""Domain records: compiled workflows and agents, as every later part of the runner sees them.

Frozen, keyword-only dataclasses without I/O. They are built by `runner.spec.compile` from
documents that passed validation; mappings inside them (`with`, schemas) are plain JSON values and
must be treated as read-only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Risk = Literal["auto", "approval_required"]
RunIf = Literal["success", "failure", "always"]
OnTimeout = Literal["reject", "approve", "fail"]
ConcurrencyPolicy = Literal["queue", "cancel-running", "skip"]
TriggerKind = Literal["push", "pull_request", "schedule", "webhook", "manual"]


@dataclass(frozen=True, kw_only=True)
class Agent:
    """A program with JSON input and a schema-checked JSON output."""

    name: str
    command: tuple[str, ...]
    directory: str
    source: str
    digest: str
    builtin: bool = False
    description: str = ""
    image: str | None = None
    risk: Risk = "auto"
    inputs: Mapping[str, Any] | None = None
    outputs: Mapping[str, Any] | None = None
    timeout: float | None = None
    memory: str | None = None
    cpu: str | None = None
    pids: int | None = None
    network: bool = False
    secrets: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class ApprovalPolicy:
    """Who must approve a gated step, how many, and what happens when nobody does."""

    required: int = 1
    approvers: tuple[str, ...] = ()
    allow_author: bool = False
    timeout: float | None = None
    on_timeout: OnTimeout = "reject"


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    max: int = 0
    backoff: float = 10.0


@dataclass(frozen=True, kw_only=True)
class Step:
    id: str
    agent: str
    needs: tuple[str, ...] = ()
    name: str = ""
    when: str | None = None
    run_if: RunIf = "success"
    with_: Mapping[str, Any] = field(default_factory=dict)
    approval: ApprovalPolicy | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: float | None = None


@dataclass(frozen=True, kw_only=True)
class Trigger:
    kind: TriggerKind
    config: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Schedule:
    workflow: str
    cron: str
    timezone: str = "UTC"


@dataclass(frozen=True, kw_only=True)
class Workflow:
    name: str
    source: str
    digest: str
    triggers: tuple[Trigger, ...]
    steps: tuple[Step, ...]
    description: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    inputs: Mapping[str, Any] | None = None
    concurrency_group: str | None = None
    concurrency_policy: ConcurrencyPolicy = "queue"
    timeout: float | None = None

    @property
    def schedules(self) -> tuple[Schedule, ...]:
        return tuple(
            Schedule(
                workflow=self.name,
                cron=str(t.config["cron"]),
                timezone=str(t.config.get("timezone", "UTC")),
            )
            for t in self.triggers
            if t.kind == "schedule"
        )


@dataclass(frozen=True, kw_only=True)
class Bundle:
    """Everything one revision of a workflows repo declares, plus the built-in agents."""

    workflows: Mapping[str, Workflow] = field(default_factory=dict)
    agents: Mapping[str, Agent] = field(default_factory=dict)


# --- Run-time records (what the store keeps) -------------------------------------------------

RunStatus = Literal[
    "queued",
    "running",
    "waiting_approval",
    "succeeded",
    "failed",
    "cancelled",
    "rejected",
    "skipped",
]
StepStatus = Literal[
    "pending",
    "running",
    "waiting_approval",
    "succeeded",
    "failed",
    "skipped",
    "cancelled",
    "rejected",
]
FINISHED: frozenset[str] = frozenset({"succeeded", "failed", "cancelled", "rejected", "skipped"})

# For each run status, the statuses a run may come from. `queued` from a finished failure is a
# retry, from `running` a run paused while its executor is unavailable (circuit open);
# `skipped` is a run its concurrency group decided not to start.
RUN_TRANSITIONS: Mapping[str, frozenset[str]] = {
    "queued": frozenset({"failed", "cancelled", "rejected", "running"}),
    "running": frozenset({"queued", "waiting_approval"}),
    "waiting_approval": frozenset({"running"}),
    "succeeded": frozenset({"running"}),
    "failed": frozenset({"queued", "running", "waiting_approval"}),
    "cancelled": frozenset({"queued", "running", "waiting_approval"}),
    "rejected": frozenset({"running", "waiting_approval"}),
    "skipped": frozenset({"queued"}),
}


@dataclass(frozen=True, kw_only=True)
class RunRequest:
    """A request to run a workflow at a revision; the idempotency key makes it happen once."""

    workflow: str
    source: str
    revision: str
    idempotency_key: str
    trigger: Mapping[str, Any] = field(default_factory=dict)
    inputs: Mapping[str, Any] = field(default_factory=dict)
    concurrency_group: str | None = None


@dataclass(frozen=True, kw_only=True)
class Run:
    id: int
    workflow: str
    source: str
    revision: str
    status: RunStatus
    idempotency_key: str
    created_at: float
    updated_at: float
    trigger: Mapping[str, Any] = field(default_factory=dict)
    inputs: Mapping[str, Any] = field(default_factory=dict)
    concurrency_group: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    error: str | None = None
    # what the unfinished run waits for, as stored (see `run_wait`), or None
    wait: Mapping[str, Any] | None = None


WaitFor = Literal["fetch", "executor", "concurrency", "approval"]


def run_wait(
    waits_for: WaitFor, reason: str, since: float, next_attempt: float | None = None
) -> dict[str, Any]:
    """The `wait` of a run, in the one JSON shape the store, the API and the CLI show:
    what it waits for, why (human text), since when and when it is next tried (epoch seconds;
    None when nothing is scheduled, e.g. an approval)."""
    return {"for": waits_for, "reason": reason, "since": since, "next_attempt": next_attempt}


@dataclass(frozen=True, kw_only=True)
class StepRun:
    run_id: int
    step_id: str
    status: StepStatus
    attempt: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    outputs: Mapping[str, Any] | None = None
    error: str | None = None
    inputs_digest: str | None = None
    log_size: int = 0
    log_truncated: bool = False


@dataclass(frozen=True, kw_only=True)
class LogSlice:
    """Part of a step's log from `offset`; `next_offset` is where the next read starts."""

    data: bytes
    offset: int
    next_offset: int
    truncated: bool


@dataclass(frozen=True, kw_only=True)
class Event:
    """An inbound webhook delivery, stored before it is answered."""

    id: int
    forge: str
    delivery_id: str
    event_type: str
    headers: Mapping[str, str]
    body: bytes
    received_at: float
    status: Literal["pending", "done", "failed"] = "pending"
    attempts: int = 0
    error: str | None = None
    not_before: float | None = None  # a retry after a passing failure waits until then


@dataclass(frozen=True, kw_only=True)
class Approval:
    """A gate a step waits at, bound to what the approvers are shown."""

    id: int
    run_id: int
    step_id: str
    status: Literal["pending", "approved", "rejected", "expired"]
    policy: ApprovalPolicy
    sha: str | None
    revision: str
    inputs_digest: str
    requested_at: float
    deadline: float | None = None
    decided_at: float | None = None


@dataclass(frozen=True, kw_only=True)
class Decision:
    """One person's (or the timeout's) decision on an approval; append-only."""

    approval_id: int
    actor: str
    decision: Literal["approve", "reject"]
    via: Literal["cli", "api", "comment", "timeout", "cancel"]
    sha: str | None
    revision: str
    inputs_digest: str
    comment: str = ""
    url: str | None = None
    forge: str | None = None  # the configured forge a comment came through
    comment_id: str | None = None  # the forge's id of that comment: it decides a gate once
    id: int = 0
    created_at: float = 0.0


@dataclass(frozen=True, kw_only=True)
class Condition:
    type: Literal["Ready", "Reconciling", "Stalled"]
    status: bool
    reason: str
    message: str = ""
    changed_at: float = 0.0


@dataclass(frozen=True, kw_only=True)
class SourceStatus:
    """What the reconciler last did with a source."""

    name: str
    applied_revision: str | None = None
    applied_at: float | None = None
    attempted_revision: str | None = None
    attempted_at: float | None = None
    conditions: tuple[Condition, ...] = ()
    errors: tuple[Mapping[str, Any], ...] = ()
    last_fetch_at: float | None = None
    last_fetch_duration: float | None = None


@dataclass(frozen=True, kw_only=True)
class StoredDocument:
    """A workflow or agent document of an applied revision, by content digest."""

    kind: Literal["Workflow", "Agent"]
    name: str
    digest: str
    content: Mapping[str, Any]
    path: str = ""
