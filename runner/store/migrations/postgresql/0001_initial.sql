-- The first schema: sources and revisions, events, runs, steps, logs, approvals.
-- Times are Unix epoch seconds; JSON is stored as text.

CREATE TABLE sources (
    name TEXT PRIMARY KEY,
    applied_revision TEXT,
    applied_at DOUBLE PRECISION,
    attempted_revision TEXT,
    attempted_at DOUBLE PRECISION,
    conditions TEXT NOT NULL DEFAULT '[]',
    errors TEXT NOT NULL DEFAULT '[]',
    last_fetch_at DOUBLE PRECISION,
    last_fetch_duration DOUBLE PRECISION,
    updated_at DOUBLE PRECISION NOT NULL
);

CREATE TABLE revisions (
    source TEXT NOT NULL,
    revision TEXT NOT NULL,
    applied_at DOUBLE PRECISION NOT NULL,
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
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    forge TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    headers TEXT NOT NULL,
    body BYTEA NOT NULL,
    received_at DOUBLE PRECISION NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    handled_at DOUBLE PRECISION,
    lease_owner TEXT,
    lease_expires_at DOUBLE PRECISION,
    UNIQUE (forge, delivery_id)
);
CREATE INDEX events_by_status ON events (status, id);

CREATE TABLE runs (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workflow TEXT NOT NULL,
    source TEXT NOT NULL,
    revision TEXT NOT NULL,
    status TEXT NOT NULL,
    idempotency_key TEXT NOT NULL UNIQUE,
    trigger_info TEXT NOT NULL,
    inputs TEXT NOT NULL,
    concurrency_group TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION,
    lease_owner TEXT,
    lease_expires_at DOUBLE PRECISION,
    error TEXT
);
CREATE INDEX runs_by_status ON runs (status, id);
CREATE INDEX runs_by_workflow ON runs (workflow, id);

CREATE TABLE step_runs (
    run_id BIGINT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    status TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    started_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION,
    outputs TEXT,
    error TEXT,
    inputs_digest TEXT,
    log_size INTEGER NOT NULL DEFAULT 0,
    log_truncated INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, step_id)
);

CREATE TABLE step_logs (
    run_id BIGINT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step_id TEXT NOT NULL,
    start_offset INTEGER NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (run_id, step_id, start_offset)
);

CREATE TABLE approvals (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id BIGINT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step_id TEXT NOT NULL,
    status TEXT NOT NULL,
    policy TEXT NOT NULL,
    sha TEXT,
    revision TEXT NOT NULL,
    inputs_digest TEXT NOT NULL,
    requested_at DOUBLE PRECISION NOT NULL,
    deadline DOUBLE PRECISION,
    decided_at DOUBLE PRECISION
);
CREATE UNIQUE INDEX approvals_one_pending ON approvals (run_id, step_id) WHERE status = 'pending';
CREATE INDEX approvals_by_status ON approvals (status, id);

CREATE TABLE approval_decisions (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    approval_id BIGINT NOT NULL REFERENCES approvals (id) ON DELETE CASCADE,
    actor TEXT NOT NULL,
    decision TEXT NOT NULL,
    via TEXT NOT NULL,
    comment TEXT NOT NULL DEFAULT '',
    url TEXT,
    sha TEXT,
    revision TEXT NOT NULL,
    inputs_digest TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);

-- The audit trail: a decision is never changed (whole runs may be pruned by retention).
CREATE FUNCTION approval_decisions_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'approval decisions are append-only';
END;
$$;
CREATE TRIGGER approval_decisions_append_only BEFORE UPDATE ON approval_decisions
    FOR EACH ROW EXECUTE FUNCTION approval_decisions_append_only();
