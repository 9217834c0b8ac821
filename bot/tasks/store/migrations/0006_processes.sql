-- 6: every process registers itself and beats; its claims live as long as it beats.

-- One row per process (a `run` or a `worker`): its claims are the tasks whose claim_owner
-- starts with "<process_id>/". alive_until is what its last beat extended them to.
CREATE TABLE processes (
    process_id  TEXT    PRIMARY KEY,
    role        TEXT    NOT NULL,
    host        TEXT    NOT NULL,
    pid         INTEGER NOT NULL,
    started_at  REAL    NOT NULL,
    beat_at     REAL    NOT NULL,
    alive_until REAL    NOT NULL
) WITHOUT ROWID;

-- A beat extends the claims of one process: the range of its owners, not a scan of every task.
CREATE INDEX ix_tasks_claim_owner ON tasks (claim_owner) WHERE claim_owner IS NOT NULL;
