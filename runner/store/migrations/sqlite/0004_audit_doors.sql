-- The doors of the audit trail that 0003 left open, found by attacking it:
-- * a signed webhook body re-sent under a new (unsigned) delivery id is the same delivery:
--   events are unique by their body's digest too (forges; the generic hook keeps its ids);
-- * one person is one approver, whatever the case of their name;
-- * INSERT OR REPLACE deletes without firing delete triggers: rows are never replaced;
-- * what started a run (its trigger, inputs, revision) and who pushed a head are never
--   rewritten, and a comment's claim is never released;
-- * retention deletes only runs that are finished when it deletes them.

ALTER TABLE events ADD COLUMN body_digest TEXT;
CREATE UNIQUE INDEX events_one_per_body ON events (forge, body_digest)
    WHERE body_digest IS NOT NULL;

DROP TRIGGER approvals_state_by_decisions;
CREATE TRIGGER approvals_state_by_decisions BEFORE UPDATE ON approvals
WHEN NOT (
    OLD.status = 'pending'
    AND NEW.id = OLD.id AND NEW.run_id = OLD.run_id AND NEW.step_id = OLD.step_id
    AND NEW.policy = OLD.policy AND NEW.sha IS OLD.sha AND NEW.revision = OLD.revision
    AND NEW.inputs_digest = OLD.inputs_digest AND NEW.requested_at = OLD.requested_at
    AND NEW.deadline IS OLD.deadline
    AND (
        (NEW.status = 'approved' AND (
            SELECT COUNT(DISTINCT lower(actor)) FROM approval_decisions
            WHERE approval_id = OLD.id AND decision = 'approve' AND via <> 'timeout'
        ) >= max(COALESCE(json_extract(OLD.policy, '$.required'), 1), 1))
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

CREATE TRIGGER approvals_born_pending BEFORE INSERT ON approvals
WHEN NEW.status <> 'pending' OR EXISTS (SELECT 1 FROM approvals WHERE id = NEW.id)
    OR EXISTS (
        SELECT 1 FROM approvals
        WHERE run_id = NEW.run_id AND step_id = NEW.step_id AND status = 'pending'
    )
BEGIN
    SELECT RAISE(ABORT, 'approvals are append-only: a new gate is pending and never replaces one');
END;

CREATE TRIGGER approval_decisions_never_replaced BEFORE INSERT ON approval_decisions
WHEN EXISTS (SELECT 1 FROM approval_decisions WHERE id = NEW.id)
BEGIN
    SELECT RAISE(ABORT, 'approval decisions are append-only: a decision is never replaced');
END;

CREATE TRIGGER runs_never_replaced BEFORE INSERT ON runs
WHEN EXISTS (SELECT 1 FROM runs WHERE id = NEW.id)
BEGIN
    SELECT RAISE(ABORT, 'runs are never replaced');
END;
-- a second request with a run's idempotency key is that run (ON CONFLICT DO NOTHING does the
-- same): it never replaces it
CREATE TRIGGER runs_one_per_key BEFORE INSERT ON runs
WHEN EXISTS (SELECT 1 FROM runs WHERE idempotency_key = NEW.idempotency_key)
BEGIN
    SELECT RAISE(IGNORE);
END;

CREATE TRIGGER runs_start_never_rewritten BEFORE UPDATE ON runs
WHEN NEW.id IS NOT OLD.id OR NEW.workflow IS NOT OLD.workflow OR NEW.source IS NOT OLD.source
    OR NEW.revision IS NOT OLD.revision OR NEW.idempotency_key IS NOT OLD.idempotency_key
    OR NEW.trigger_info IS NOT OLD.trigger_info OR NEW.inputs IS NOT OLD.inputs
    OR NEW.created_at IS NOT OLD.created_at
BEGIN
    SELECT RAISE(ABORT, 'what started a run (trigger, inputs, revision) is never rewritten');
END;

CREATE TRIGGER comment_commands_kept BEFORE INSERT ON comment_commands
WHEN EXISTS (
    SELECT 1 FROM comment_commands WHERE forge = NEW.forge AND comment_id = NEW.comment_id
)
BEGIN
    SELECT RAISE(IGNORE);
END;
CREATE TRIGGER comment_commands_no_update BEFORE UPDATE ON comment_commands
BEGIN
    SELECT RAISE(ABORT, 'a comment, once claimed, stays claimed');
END;
CREATE TRIGGER comment_commands_no_delete BEFORE DELETE ON comment_commands
BEGIN
    SELECT RAISE(ABORT, 'a comment, once claimed, stays claimed');
END;

CREATE TRIGGER pull_pushes_kept BEFORE INSERT ON pull_pushes
WHEN EXISTS (
    SELECT 1 FROM pull_pushes WHERE forge = NEW.forge AND repository = NEW.repository
    AND number = NEW.number AND sha = NEW.sha AND pusher = NEW.pusher
)
BEGIN
    SELECT RAISE(IGNORE);
END;
CREATE TRIGGER pull_pushes_no_update BEFORE UPDATE ON pull_pushes
BEGIN
    SELECT RAISE(ABORT, 'who pushed a head is never rewritten');
END;
CREATE TRIGGER pull_pushes_no_delete BEFORE DELETE ON pull_pushes
BEGIN
    SELECT RAISE(ABORT, 'who pushed a head is never rewritten');
END;

DROP TRIGGER approval_decisions_no_delete;
CREATE TRIGGER approval_decisions_no_delete BEFORE DELETE ON approval_decisions
WHEN NOT EXISTS (
    SELECT 1 FROM approvals a JOIN retention_runs r ON r.run_id = a.run_id
    JOIN runs u ON u.id = a.run_id
    WHERE a.id = OLD.approval_id
    AND u.status IN ('succeeded', 'failed', 'cancelled', 'rejected', 'skipped')
)
BEGIN
    SELECT RAISE(ABORT, 'approval decisions are append-only: only runner db prune removes whole finished runs');
END;

DROP TRIGGER approvals_no_delete;
CREATE TRIGGER approvals_no_delete BEFORE DELETE ON approvals
WHEN NOT EXISTS (
    SELECT 1 FROM retention_runs r JOIN runs u ON u.id = r.run_id
    WHERE r.run_id = OLD.run_id
    AND u.status IN ('succeeded', 'failed', 'cancelled', 'rejected', 'skipped')
)
BEGIN
    SELECT RAISE(ABORT, 'approvals are append-only: only runner db prune removes whole finished runs');
END;

DROP TRIGGER runs_no_delete;
CREATE TRIGGER runs_no_delete BEFORE DELETE ON runs
WHEN OLD.id NOT IN (SELECT run_id FROM retention_runs)
    OR OLD.status NOT IN ('succeeded', 'failed', 'cancelled', 'rejected', 'skipped')
BEGIN
    SELECT RAISE(ABORT, 'runs are removed only by runner db prune, and only when finished');
END;

-- A run listed for retention leaves the list only once it is gone, and does not change while
-- listed: retention removes whole finished runs, never just their decisions.
CREATE TRIGGER retention_runs_until_removed BEFORE DELETE ON retention_runs
WHEN EXISTS (SELECT 1 FROM runs WHERE id = OLD.run_id)
BEGIN
    SELECT RAISE(ABORT, 'a run listed for retention is removed whole before it leaves the list');
END;
CREATE TRIGGER runs_listed_for_retention_stay BEFORE UPDATE ON runs
WHEN OLD.id IN (SELECT run_id FROM retention_runs)
BEGIN
    SELECT RAISE(ABORT, 'a run being removed by retention does not change');
END;
