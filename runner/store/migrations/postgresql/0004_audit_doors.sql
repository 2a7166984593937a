-- The doors of the audit trail that 0003 left open, found by attacking it:
-- * a signed webhook body re-sent under a new (unsigned) delivery id is the same delivery:
--   events are unique by their body's digest too (forges; the generic hook keeps its ids);
-- * one person is one approver, whatever the case of their name;
-- * TRUNCATE fires no row trigger: it is refused on the audit trail's tables;
-- * what started a run (its trigger, inputs, revision) and who pushed a head are never
--   rewritten, and a comment's claim is never released;
-- * retention deletes only runs that are finished when it deletes them.

ALTER TABLE events ADD COLUMN body_digest TEXT;
CREATE UNIQUE INDEX events_one_per_body ON events (forge, body_digest)
    WHERE body_digest IS NOT NULL;

CREATE OR REPLACE FUNCTION approvals_state_by_decisions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status = 'pending'
        AND NEW.id = OLD.id AND NEW.run_id = OLD.run_id AND NEW.step_id = OLD.step_id
        AND NEW.policy = OLD.policy AND NEW.sha IS NOT DISTINCT FROM OLD.sha
        AND NEW.revision = OLD.revision AND NEW.inputs_digest = OLD.inputs_digest
        AND NEW.requested_at = OLD.requested_at
        AND NEW.deadline IS NOT DISTINCT FROM OLD.deadline
        AND (
            (NEW.status = 'approved' AND (
                SELECT COUNT(DISTINCT lower(actor)) FROM approval_decisions
                WHERE approval_id = OLD.id AND decision = 'approve' AND via <> 'timeout'
            ) >= GREATEST(COALESCE((OLD.policy::jsonb ->> 'required')::int, 1), 1))
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

CREATE FUNCTION approvals_born_pending() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status <> 'pending' THEN
        RAISE EXCEPTION 'approvals are append-only: a new gate is pending';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER approvals_born_pending BEFORE INSERT ON approvals
    FOR EACH ROW EXECUTE FUNCTION approvals_born_pending();

CREATE FUNCTION runs_start_never_rewritten() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.id IS DISTINCT FROM OLD.id OR NEW.workflow IS DISTINCT FROM OLD.workflow
        OR NEW.source IS DISTINCT FROM OLD.source OR NEW.revision IS DISTINCT FROM OLD.revision
        OR NEW.idempotency_key IS DISTINCT FROM OLD.idempotency_key
        OR NEW.trigger_info IS DISTINCT FROM OLD.trigger_info
        OR NEW.inputs IS DISTINCT FROM OLD.inputs OR NEW.created_at IS DISTINCT FROM OLD.created_at
    THEN
        RAISE EXCEPTION 'what started a run (trigger, inputs, revision) is never rewritten';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER runs_start_never_rewritten BEFORE UPDATE ON runs
    FOR EACH ROW EXECUTE FUNCTION runs_start_never_rewritten();

CREATE FUNCTION audit_record_kept() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are never rewritten or removed', TG_TABLE_NAME;
END;
$$;
CREATE TRIGGER comment_commands_kept BEFORE UPDATE OR DELETE ON comment_commands
    FOR EACH ROW EXECUTE FUNCTION audit_record_kept();
CREATE TRIGGER pull_pushes_kept BEFORE UPDATE OR DELETE ON pull_pushes
    FOR EACH ROW EXECUTE FUNCTION audit_record_kept();

CREATE FUNCTION audit_no_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is part of the audit trail: it is never truncated (runner db prune removes finished runs)', TG_TABLE_NAME;
END;
$$;
CREATE TRIGGER runs_no_truncate BEFORE TRUNCATE ON runs
    FOR EACH STATEMENT EXECUTE FUNCTION audit_no_truncate();
CREATE TRIGGER approvals_no_truncate BEFORE TRUNCATE ON approvals
    FOR EACH STATEMENT EXECUTE FUNCTION audit_no_truncate();
CREATE TRIGGER approval_decisions_no_truncate BEFORE TRUNCATE ON approval_decisions
    FOR EACH STATEMENT EXECUTE FUNCTION audit_no_truncate();
CREATE TRIGGER comment_commands_no_truncate BEFORE TRUNCATE ON comment_commands
    FOR EACH STATEMENT EXECUTE FUNCTION audit_no_truncate();
CREATE TRIGGER pull_pushes_no_truncate BEFORE TRUNCATE ON pull_pushes
    FOR EACH STATEMENT EXECUTE FUNCTION audit_no_truncate();
CREATE TRIGGER retention_runs_no_truncate BEFORE TRUNCATE ON retention_runs
    FOR EACH STATEMENT EXECUTE FUNCTION audit_no_truncate();

-- Deletes: only of finished runs listed for retention (decisions and approvals through them).
CREATE OR REPLACE FUNCTION audit_no_delete() RETURNS trigger LANGUAGE plpgsql AS $$
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
    IF owner IS NULL OR NOT EXISTS (
        SELECT 1 FROM retention_runs r JOIN runs u ON u.id = r.run_id
        WHERE r.run_id = owner
        AND u.status IN ('succeeded', 'failed', 'cancelled', 'rejected', 'skipped')
    ) THEN
        RAISE EXCEPTION '% are append-only: only runner db prune removes whole finished runs',
            CASE TG_TABLE_NAME WHEN 'approval_decisions' THEN 'approval decisions'
            ELSE TG_TABLE_NAME END;
    END IF;
    RETURN OLD;
END;
$$;

-- A run listed for retention leaves the list only once it is gone, and does not change while
-- listed: retention removes whole finished runs, never just their decisions.
CREATE FUNCTION retention_runs_until_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM runs WHERE id = OLD.run_id) THEN
        RAISE EXCEPTION 'a run listed for retention is removed whole before it leaves the list';
    END IF;
    RETURN OLD;
END;
$$;
CREATE TRIGGER retention_runs_until_removed BEFORE DELETE ON retention_runs
    FOR EACH ROW EXECUTE FUNCTION retention_runs_until_removed();

CREATE FUNCTION runs_listed_for_retention_stay() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM retention_runs WHERE run_id = OLD.id) THEN
        RAISE EXCEPTION 'a run being removed by retention does not change';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER runs_listed_for_retention_stay BEFORE UPDATE ON runs
    FOR EACH ROW EXECUTE FUNCTION runs_listed_for_retention_stay();
