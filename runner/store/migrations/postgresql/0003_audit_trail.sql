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
    event_id BIGINT,
    repository TEXT NOT NULL,
    number INTEGER NOT NULL,
    actor TEXT NOT NULL,
    handled_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (forge, comment_id)
);

CREATE TABLE pull_pushes (
    forge TEXT NOT NULL,
    repository TEXT NOT NULL,
    number INTEGER NOT NULL,
    sha TEXT NOT NULL,
    pusher TEXT NOT NULL,
    recorded_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (forge, repository, number, sha, pusher)
);

CREATE TABLE retention_runs (
    run_id BIGINT PRIMARY KEY
);

CREATE FUNCTION retention_runs_finished_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM runs WHERE id = NEW.run_id
        AND status IN ('succeeded', 'failed', 'cancelled', 'rejected', 'skipped')
    ) THEN
        RAISE EXCEPTION 'retention removes finished runs only';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER retention_runs_finished_only BEFORE INSERT ON retention_runs
    FOR EACH ROW EXECUTE FUNCTION retention_runs_finished_only();

-- Deletes: only of runs listed for retention (decisions and approvals through their run).
CREATE FUNCTION audit_no_delete() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    owner BIGINT;
BEGIN
    IF TG_TABLE_NAME = 'runs' THEN
        owner := OLD.id;
    ELSIF TG_TABLE_NAME = 'approvals' THEN
        owner := OLD.run_id;
    ELSE
        SELECT run_id INTO owner FROM approvals WHERE id = OLD.approval_id;
    END IF;
    IF owner IS NULL OR NOT EXISTS (SELECT 1 FROM retention_runs WHERE run_id = owner) THEN
        RAISE EXCEPTION '% are append-only: only runner db prune removes whole finished runs',
            CASE TG_TABLE_NAME WHEN 'approval_decisions' THEN 'approval decisions'
            ELSE TG_TABLE_NAME END;
    END IF;
    RETURN OLD;
END;
$$;
CREATE TRIGGER approval_decisions_no_delete BEFORE DELETE ON approval_decisions
    FOR EACH ROW EXECUTE FUNCTION audit_no_delete();
CREATE TRIGGER approvals_no_delete BEFORE DELETE ON approvals
    FOR EACH ROW EXECUTE FUNCTION audit_no_delete();
CREATE TRIGGER runs_no_delete BEFORE DELETE ON runs
    FOR EACH ROW EXECUTE FUNCTION audit_no_delete();

CREATE FUNCTION approval_decisions_while_pending() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM approvals WHERE id = NEW.approval_id AND status = 'pending') THEN
        RAISE EXCEPTION 'a decision is recorded only on a pending approval';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER approval_decisions_while_pending BEFORE INSERT ON approval_decisions
    FOR EACH ROW EXECUTE FUNCTION approval_decisions_while_pending();

CREATE FUNCTION approvals_state_by_decisions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status = 'pending'
        AND NEW.id = OLD.id AND NEW.run_id = OLD.run_id AND NEW.step_id = OLD.step_id
        AND NEW.policy = OLD.policy AND NEW.sha IS NOT DISTINCT FROM OLD.sha
        AND NEW.revision = OLD.revision AND NEW.inputs_digest = OLD.inputs_digest
        AND NEW.requested_at = OLD.requested_at
        AND NEW.deadline IS NOT DISTINCT FROM OLD.deadline
        AND (
            (NEW.status = 'approved' AND (
                SELECT COUNT(DISTINCT actor) FROM approval_decisions
                WHERE approval_id = OLD.id AND decision = 'approve' AND via <> 'timeout'
            ) >= COALESCE((OLD.policy::jsonb ->> 'required')::int, 1))
            OR (NEW.status = 'rejected' AND EXISTS (
                SELECT 1 FROM approval_decisions
                WHERE approval_id = OLD.id AND decision = 'reject' AND via <> 'timeout'
            ))
            OR (NEW.status = 'expired' AND EXISTS (
                SELECT 1 FROM approval_decisions WHERE approval_id = OLD.id AND via = 'timeout'
            ))
        )
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'an approval changes state only through its recorded decisions';
END;
$$;
CREATE TRIGGER approvals_state_by_decisions BEFORE UPDATE ON approvals
    FOR EACH ROW EXECUTE FUNCTION approvals_state_by_decisions();
