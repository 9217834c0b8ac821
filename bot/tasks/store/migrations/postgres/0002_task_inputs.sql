-- 2: the prepared input images of a task (INPUT_STORAGE=database, the default), so that any
-- process on any machine can read them for "Again", "Animate" or a create after a takeover.
-- One row per image, in the task's label order (position); SQLite's migration 5.
CREATE TABLE task_inputs (
    task_id   BIGINT  NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    position  INTEGER NOT NULL,
    label     TEXT    NOT NULL,
    extension TEXT    NOT NULL,
    data      BYTEA   NOT NULL,
    PRIMARY KEY (task_id, position)
);
-- PNG and JPEG are compressed already: kept out of line (TOAST) without a second try at it.
ALTER TABLE task_inputs ALTER COLUMN data SET STORAGE EXTERNAL;
