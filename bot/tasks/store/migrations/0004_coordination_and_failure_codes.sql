-- 4: coordination lives in the store, so that several processes can share the work, and a
-- failure is kept as a code with its parameters (the words are chosen when shown).

-- A claim: the process (owner) that works on the task now, for what (purpose: admit,
-- complete, deliver) and until when (unix time). An expired claim is free to take.
ALTER TABLE tasks ADD COLUMN claim_owner TEXT;
ALTER TABLE tasks ADD COLUMN claim_purpose TEXT;
ALTER TABLE tasks ADD COLUMN claim_until REAL;
-- The result's Discord message, stored as soon as it is posted (before "delivered").
ALTER TABLE tasks ADD COLUMN posted_message_id INTEGER;
-- Catalogue codes and their parameters (JSON objects). Rows from before keep their prose in
-- failure_reason / delivery_error.
ALTER TABLE tasks ADD COLUMN failure_code TEXT;
ALTER TABLE tasks ADD COLUMN failure_params TEXT;
ALTER TABLE tasks ADD COLUMN delivery_error_code TEXT;
ALTER TABLE tasks ADD COLUMN delivery_error_params TEXT;

-- Admission's scan: each member's queued tasks of a kind, in id order.
CREATE INDEX ix_tasks_queued ON tasks (kind, user_id, id, claim_until) WHERE state = 'queued';
-- The poll scan: running tasks by their next check.
CREATE INDEX ix_tasks_due_poll ON tasks (next_check_at)
    WHERE state IN ('submitted', 'processing');

-- Members take turns per kind: the turn number of each member's last admission (higher is
-- more recent). A member without a row has never been admitted and goes first.
CREATE TABLE admission_turns (
    kind    TEXT    NOT NULL,
    user_id INTEGER NOT NULL,
    turn    INTEGER NOT NULL,
    PRIMARY KEY (kind, user_id)
) WITHOUT ROWID;
