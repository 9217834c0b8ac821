-- 5: the prepared input images of a task (INPUT_STORAGE=database, the default), so that any
-- process can read them for "Again", "Animate" or a create after a restart or a takeover.
-- One row per image, in the task's label order (position). Tasks stored before keep their
-- files under DATA_DIR/inputs/<id>/ (their input_files say so) and are read from there.
CREATE TABLE task_inputs (
    task_id   INTEGER NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    position  INTEGER NOT NULL,
    label     TEXT    NOT NULL,
    extension TEXT    NOT NULL,
    data      BLOB    NOT NULL,
    PRIMARY KEY (task_id, position)
);
