"""Rows to records: the column lists the store selects and how each row becomes a record."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from typing import Any

from runner.model import (
    Approval,
    ApprovalPolicy,
    Condition,
    Decision,
    Event,
    Run,
    SourceStatus,
    StepRun,
    StoredDocument,
)

RUN = (
    "id, workflow, source, revision, status, idempotency_key, trigger_info, inputs, "
    "concurrency_group, created_at, updated_at, started_at, finished_at, lease_owner, "
    "lease_expires_at, error, wait"
)
EVENT = (
    "id, forge, delivery_id, event_type, headers, body, received_at, status, attempts, error,"
    " not_before"
)
STEP = (
    "run_id, step_id, status, attempt, started_at, finished_at, outputs, error, inputs_digest, "
    "log_size, log_truncated"
)
APPROVAL = (
    "id, run_id, step_id, status, policy, sha, revision, inputs_digest, requested_at, deadline, "
    "decided_at"
)
DECISION = (
    "id, approval_id, actor, decision, via, comment, url, sha, revision, inputs_digest, created_at,"
    " forge, comment_id"
)


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


# -- document pages: a revision's document list, shared between revisions ------------------------
Key = tuple[str, str]  # (kind, name)
Entry = tuple[str, str, str, str]  # (kind, name, content digest, path)


def entry(doc: StoredDocument) -> Entry:
    return (doc.kind, doc.name, doc.digest, doc.path)


def page_count(documents: int) -> int:
    """How many pages a revision of `documents` documents gets: about sqrt(n) pages of about
    sqrt(n) entries (a power of two), so a change rewrites one small page and the revision's
    list of pages stays short."""
    return 1 << max(0, round(math.log2(documents) / 2)) if documents > 1 else 1


def page_of(key: Key, count: int) -> int:
    """The page of a (kind, name) among `count` pages: stable across revisions and processes."""
    digest = hashlib.sha256(f"{key[0]}\0{key[1]}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % count


def page_text(entries: Iterable[Entry]) -> str:
    return json.dumps(sorted(entries), separators=(",", ":"), ensure_ascii=False)


def page_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def page_entries(text: str) -> list[Entry]:
    return [(e[0], e[1], e[2], e[3]) for e in json.loads(text)]


def _mapping(text: str) -> Any:
    return {} if text == "{}" else json.loads(text)  # most runs have no inputs


def run(row: tuple[Any, ...]) -> Run:
    return Run(
        id=int(row[0]),
        workflow=row[1],
        source=row[2],
        revision=row[3],
        status=row[4],
        idempotency_key=row[5],
        trigger=_mapping(row[6]),
        inputs=_mapping(row[7]),
        concurrency_group=row[8],
        created_at=row[9],
        updated_at=row[10],
        started_at=row[11],
        finished_at=row[12],
        lease_owner=row[13],
        lease_expires_at=row[14],
        error=row[15],
        wait=json.loads(row[16]) if row[16] else None,
    )


def event(row: tuple[Any, ...]) -> Event:
    return Event(
        id=int(row[0]),
        forge=row[1],
        delivery_id=row[2],
        event_type=row[3],
        headers=json.loads(row[4]),
        body=bytes(row[5]),
        received_at=row[6],
        status=row[7],
        attempts=row[8],
        error=row[9],
        not_before=row[10],
    )


def step(row: tuple[Any, ...]) -> StepRun:
    return StepRun(
        run_id=int(row[0]),
        step_id=row[1],
        status=row[2],
        attempt=row[3],
        started_at=row[4],
        finished_at=row[5],
        outputs=json.loads(row[6]) if row[6] is not None else None,
        error=row[7],
        inputs_digest=row[8],
        log_size=row[9],
        log_truncated=bool(row[10]),
    )


def policy(text: str) -> ApprovalPolicy:
    raw = json.loads(text)
    raw["approvers"] = tuple(raw.get("approvers", ()))
    return ApprovalPolicy(**raw)


def approval(row: tuple[Any, ...]) -> Approval:
    return Approval(
        id=int(row[0]),
        run_id=int(row[1]),
        step_id=row[2],
        status=row[3],
        policy=policy(row[4]),
        sha=row[5],
        revision=row[6],
        inputs_digest=row[7],
        requested_at=row[8],
        deadline=row[9],
        decided_at=row[10],
    )


def decision(row: tuple[Any, ...]) -> Decision:
    return Decision(
        id=int(row[0]),
        approval_id=int(row[1]),
        actor=row[2],
        decision=row[3],
        via=row[4],
        comment=row[5],
        url=row[6],
        sha=row[7],
        revision=row[8],
        inputs_digest=row[9],
        created_at=row[10],
        forge=row[11],
        comment_id=row[12],
    )


def source(row: tuple[Any, ...]) -> SourceStatus:
    return SourceStatus(
        name=row[0],
        applied_revision=row[1],
        applied_at=row[2],
        attempted_revision=row[3],
        attempted_at=row[4],
        conditions=tuple(Condition(**c) for c in json.loads(row[5])),
        errors=tuple(json.loads(row[6])),
        last_fetch_at=row[7],
        last_fetch_duration=row[8],
    )
