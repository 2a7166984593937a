"""The JSON shapes the REST API answers with (described in `openapi.py`). Times are RFC 3339
strings in UTC; nothing secret is part of any shape."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from runner.model import Approval, Decision, Run, SourceStatus, StepRun, Workflow


def when(value: float | None) -> str | None:
    return None if value is None else _rfc3339(value)


@lru_cache(maxsize=65536)
def _rfc3339(value: float) -> str:  # listings format the same finished times again and again
    return datetime.fromtimestamp(value, UTC).isoformat()


def run_view(run: Run) -> dict[str, Any]:
    return {
        "id": run.id,
        "workflow": run.workflow,
        "source": run.source,
        "revision": run.revision,
        "status": run.status,
        "trigger": dict(run.trigger),
        "inputs": dict(run.inputs),
        "error": run.error,
        # what the run waits for (epoch seconds, as stored: model.run_wait), or null
        "wait": dict(run.wait) if run.wait is not None else None,
        "created_at": when(run.created_at),
        "started_at": when(run.started_at),
        "finished_at": when(run.finished_at),
    }


def step_view(step: StepRun) -> dict[str, Any]:
    return {
        "id": step.step_id,
        "status": step.status,
        "attempt": step.attempt,
        "started_at": when(step.started_at),
        "finished_at": when(step.finished_at),
        "outputs": dict(step.outputs) if step.outputs is not None else None,
        "error": step.error,
        "log_size": step.log_size,
        "log_truncated": step.log_truncated,
    }


def decision_view(decision: Decision) -> dict[str, Any]:
    """One entry of the audit trail: who decided, how (channel, forge, comment), and what they
    were shown (commit, revision, inputs digest). `at` is added by the caller in its format."""
    return {
        "actor": decision.actor,
        "decision": decision.decision,
        "via": decision.via,
        "forge": decision.forge,
        "comment_id": decision.comment_id,
        "comment": decision.comment,
        "url": decision.url,
        "sha": decision.sha,
        "revision": decision.revision,
        "inputs_digest": decision.inputs_digest,
    }


def approval_view(approval: Approval, decisions: list[Decision]) -> dict[str, Any]:
    policy = approval.policy
    return {
        "id": approval.id,
        "run_id": approval.run_id,
        "step": approval.step_id,
        "status": approval.status,
        "required": policy.required,
        "approvers": list(policy.approvers),
        "allow_author": policy.allow_author,
        "sha": approval.sha,
        "revision": approval.revision,
        "requested_at": when(approval.requested_at),
        "deadline": when(approval.deadline),
        "decided_at": when(approval.decided_at),
        "decisions": [decision_view(d) | {"at": when(d.created_at)} for d in decisions],
    }


def workflow_view(workflow: Workflow, source: str, revision: str) -> dict[str, Any]:
    return {
        "name": workflow.name,
        "source": source,
        "revision": revision,
        "file": workflow.source,
        "description": workflow.description,
        "triggers": [t.kind for t in workflow.triggers],
        "steps": [
            {
                "id": s.id,
                "agent": s.agent,
                "needs": list(s.needs),
                "approval": s.approval is not None,
            }
            for s in workflow.steps
        ],
        "inputs": dict(workflow.inputs) if workflow.inputs is not None else None,
        "status": "active",
    }


def source_view(status: SourceStatus) -> dict[str, Any]:
    return {
        "name": status.name,
        "applied_revision": status.applied_revision,
        "applied_at": when(status.applied_at),
        "attempted_revision": status.attempted_revision,
        "attempted_at": when(status.attempted_at),
        "conditions": [
            {
                "type": c.type,
                "status": c.status,
                "reason": c.reason,
                "message": c.message,
                "changed_at": when(c.changed_at),
            }
            for c in status.conditions
        ],
        "errors": [dict(e) for e in status.errors],
        "last_fetch_at": when(status.last_fetch_at),
        "last_fetch_duration": status.last_fetch_duration,
    }
