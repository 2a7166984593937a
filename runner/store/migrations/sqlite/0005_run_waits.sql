-- What an unfinished run waits for, visible on the run (issue 16): a JSON object
-- {"for": "fetch"|"executor"|"concurrency"|"approval", "reason": text, "since": epoch seconds,
--  "next_attempt": epoch seconds or null}, or NULL when the run does not wait. Any change of
-- the run's status sets it anew (NULL unless the change says what the run now waits for).

ALTER TABLE runs ADD COLUMN wait TEXT;
