-- The first schema: sources and revisions, events, runs, steps, logs, approvals.
-- Times are Unix epoch seconds; JSON is stored as text.

CREATE TABLE sources (
    name TEXT PRIMARY KEY,
    applied_revision TEXT,
    applied_at REAL,
    attempted_revision TEXT,
    attempted_at REAL,
    conditions TEXT NOT NULL DEFAULT '[]',
    errors TEXT NOT NULL DEFAULT '[]',
    last_fetch_at REAL,
    last_fetch_duration REAL,
    updated_at REAL NOT NULL
);

CREATE TABLE revisions (
    source TEXT NOT NULL,
    revision TEXT NOT NULL,
    applied_at REAL NOT NULL,
    PRIMARY KEY (source, revision)
);

CREATE TABLE document_contents (
    digest TEXT PRIMARY KEY,
    content TEXT NOT NULL
);

CREATE TABLE documents (
    source TEXT NOT NULL,
    revision TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    digest TEXT NOT NULL REFERENCES document_contents (digest),
    path TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (source, revision, kind, name)
);

CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    forge TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL,
    received_at REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    handled_at REAL,
    lease_owner TEXT,
    lease_expires_at REAL,
    UNIQUE (forge, delivery_id)
);
CREATE INDEX events_by_status ON events (status, id);

CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow TEXT NOT NULL,
    source TEXT NOT NULL,
    revision TEXT NOT NULL,
    status TEXT NOT NULL,
    idempotency_key TEXT NOT NULL UNIQUE,
    trigger_info TEXT NOT NULL,
    inputs TEXT NOT NULL,
    concurrency_group TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    lease_owner TEXT,
    lease_expires_at REAL,
    error TEXT
);
CREATE INDEX runs_by_status ON runs (status, id);
CREATE INDEX runs_by_workflow ON runs (workflow, id);

CREATE TABLE step_runs (
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    status TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    started_at REAL,
    finished_at REAL,
    outputs TEXT,
    error TEXT,
    inputs_digest TEXT,
    log_size INTEGER NOT NULL DEFAULT 0,
    log_truncated INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, step_id)
);

CREATE TABLE step_logs (
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step_id TEXT NOT NULL,
    start_offset INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (run_id, step_id, start_offset)
);

CREATE TABLE approvals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step_id TEXT NOT NULL,
    status TEXT NOT NULL,
    policy TEXT NOT NULL,
    sha TEXT,
    revision TEXT NOT NULL,
    inputs_digest TEXT NOT NULL,
    requested_at REAL NOT NULL,
    deadline REAL,
    decided_at REAL
);
CREATE UNIQUE INDEX approvals_one_pending ON approvals (run_id, step_id) WHERE status = 'pending';
CREATE INDEX approvals_by_status ON approvals (status, id);

CREATE TABLE approval_decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    approval_id INTEGER NOT NULL REFERENCES approvals (id) ON DELETE CASCADE,
    actor TEXT NOT NULL,
    decision TEXT NOT NULL,
    via TEXT NOT NULL,
    comment TEXT NOT NULL DEFAULT '',
    url TEXT,
    sha TEXT,
    revision TEXT NOT NULL,
    inputs_digest TEXT NOT NULL,
    created_at REAL NOT NULL
);

-- The audit trail: a decision is never changed (whole runs may be pruned by retention).
CREATE TRIGGER approval_decisions_append_only BEFORE UPDATE ON approval_decisions
BEGIN
    SELECT RAISE(ABORT, 'approval decisions are append-only');
END;
