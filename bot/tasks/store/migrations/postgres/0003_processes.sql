-- 3: every process registers itself and beats; its claims live as long as it beats.

-- One row per process (a `run` or a `worker`): its claims are the tasks whose claim_owner
-- starts with "<process_id>/". alive_until is what its last beat extended them to.
CREATE TABLE processes (
    process_id  TEXT             PRIMARY KEY,
    role        TEXT             NOT NULL,
    host        TEXT             NOT NULL,
    pid         INTEGER          NOT NULL,
    started_at  DOUBLE PRECISION NOT NULL,
    beat_at     DOUBLE PRECISION NOT NULL,
    alive_until DOUBLE PRECISION NOT NULL
);

-- A beat extends the claims of one process: the range of its owners, not a scan of every task.
-- COLLATE "C": byte order, whatever the database's collation, so the range is exactly the
-- owners "<process_id>/..." (a linguistic collation may ignore the '/').
CREATE INDEX ix_tasks_claim_owner ON tasks ((claim_owner COLLATE "C"))
    WHERE claim_owner IS NOT NULL;
