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
