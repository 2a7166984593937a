-- The approval audit trail, held by the database itself (issue 15):
-- * a decision names the forge and the comment it came from; one comment decides a gate once;
-- * a comment command is acted on once, whatever delivery carries it (`comment_commands`);
-- * who pushed each pull request head, from the forge's signed deliveries (`pull_pushes`), so
--   that the author ban covers the pusher and not only the sender of the triggering event;
-- * decisions are never updated or deleted, an approval changes state only to what its
--   recorded decisions say, and only retention (`runner db prune`) removes whole finished runs:
--   it lists them in `retention_runs` inside its own transaction, and every delete checks there.

ALTER TABLE approval_decisions ADD COLUMN forge TEXT;
ALTER TABLE approval_decisions ADD COLUMN comment_id TEXT;
CREATE UNIQUE INDEX approval_decisions_one_per_comment
    ON approval_decisions (approval_id, forge, comment_id) WHERE comment_id IS NOT NULL;

CREATE TABLE comment_commands (
    forge TEXT NOT NULL,
    comment_id TEXT NOT NULL,
    event_id INTEGER,
    repository TEXT NOT NULL,
    number INTEGER NOT NULL,
    actor TEXT NOT NULL,
    handled_at REAL NOT NULL,
    PRIMARY KEY (forge, comment_id)
);

CREATE TABLE pull_pushes (
    forge TEXT NOT NULL,
    repository TEXT NOT NULL,
    number INTEGER NOT NULL,
    sha TEXT NOT NULL,
    pusher TEXT NOT NULL,
    recorded_at REAL NOT NULL,
    PRIMARY KEY (forge, repository, number, sha, pusher)
);

CREATE TABLE retention_runs (
    run_id INTEGER PRIMARY KEY
);

CREATE TRIGGER retention_runs_finished_only BEFORE INSERT ON retention_runs
WHEN NOT EXISTS (
    SELECT 1 FROM runs WHERE id = NEW.run_id
    AND status IN ('succeeded', 'failed', 'cancelled', 'rejected', 'skipped')
)
BEGIN
    SELECT RAISE(ABORT, 'retention removes finished runs only');
END;

CREATE TRIGGER approval_decisions_no_delete BEFORE DELETE ON approval_decisions
WHEN NOT EXISTS (
    SELECT 1 FROM approvals a JOIN retention_runs r ON r.run_id = a.run_id
    WHERE a.id = OLD.approval_id
)
BEGIN
    SELECT RAISE(ABORT, 'approval decisions are append-only: only runner db prune removes whole finished runs');
END;

CREATE TRIGGER approval_decisions_while_pending BEFORE INSERT ON approval_decisions
WHEN NOT EXISTS (SELECT 1 FROM approvals WHERE id = NEW.approval_id AND status = 'pending')
BEGIN
    SELECT RAISE(ABORT, 'a decision is recorded only on a pending approval');
END;

CREATE TRIGGER approvals_no_delete BEFORE DELETE ON approvals
WHEN OLD.run_id NOT IN (SELECT run_id FROM retention_runs)
BEGIN
    SELECT RAISE(ABORT, 'approvals are append-only: only runner db prune removes whole finished runs');
END;

CREATE TRIGGER runs_no_delete BEFORE DELETE ON runs
WHEN OLD.id NOT IN (SELECT run_id FROM retention_runs)
BEGIN
    SELECT RAISE(ABORT, 'runs are removed only by runner db prune, and only when finished');
END;

CREATE TRIGGER approvals_state_by_decisions BEFORE UPDATE ON approvals
WHEN NOT (
    OLD.status = 'pending'
    AND NEW.id = OLD.id AND NEW.run_id = OLD.run_id AND NEW.step_id = OLD.step_id
    AND NEW.policy = OLD.policy AND NEW.sha IS OLD.sha AND NEW.revision = OLD.revision
    AND NEW.inputs_digest = OLD.inputs_digest AND NEW.requested_at = OLD.requested_at
    AND NEW.deadline IS OLD.deadline
    AND (
        (NEW.status = 'approved' AND (
            SELECT COUNT(DISTINCT actor) FROM approval_decisions
            WHERE approval_id = OLD.id AND decision = 'approve' AND via <> 'timeout'
        ) >= COALESCE(json_extract(OLD.policy, '$.required'), 1))
        OR (NEW.status = 'rejected' AND EXISTS (
            SELECT 1 FROM approval_decisions
            WHERE approval_id = OLD.id AND decision = 'reject' AND via <> 'timeout'
        ))
        OR (NEW.status = 'expired' AND EXISTS (
            SELECT 1 FROM approval_decisions WHERE approval_id = OLD.id AND via = 'timeout'
        ))
    )
)
BEGIN
    SELECT RAISE(ABORT, 'an approval changes state only through its recorded decisions');
END;
