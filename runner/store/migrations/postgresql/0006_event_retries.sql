-- A delivery whose handling failed for a passing reason (the database or a forge API away for
-- a moment) stays pending and is tried again with backoff: `not_before` is when, and `attempts`
-- (counted at each claim) bounds how often. Only a permanent reason, or running out of
-- attempts, marks it failed, with the reason in `error`.
ALTER TABLE events ADD COLUMN not_before DOUBLE PRECISION;
