-- 1: tasks and guild_config.
CREATE TABLE tasks (
    -- AUTOINCREMENT: a local id ("#12") is never reused, even after rows are deleted.
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    kind              TEXT    NOT NULL,
    provider          TEXT    NOT NULL,
    simulated         INTEGER NOT NULL,
    external_task_id  TEXT    NOT NULL,
    kling_task_id     TEXT,
    state             TEXT    NOT NULL,
    params            TEXT    NOT NULL DEFAULT '{}',
    input_files       TEXT    NOT NULL DEFAULT '[]',
    input_labels      TEXT    NOT NULL DEFAULT '[]',
    slots             INTEGER NOT NULL,
    guild_id          INTEGER,
    channel_id        INTEGER NOT NULL,
    user_id           INTEGER NOT NULL,
    message_id        INTEGER,
    created_at        REAL    NOT NULL,
    submitted_at      REAL,
    processing_at     REAL,
    finished_at       REAL,
    delivered_at      REAL,
    kling_status      TEXT,
    result_urls       TEXT    NOT NULL DEFAULT '[]',
    result_files      TEXT    NOT NULL DEFAULT '[]',
    credits           TEXT,
    failure_reason    TEXT,
    delivery_attempts INTEGER NOT NULL DEFAULT 0,
    delivery_error    TEXT,
    cancel_requested  INTEGER NOT NULL DEFAULT 0,
    callback_token    TEXT,
    next_check_at     REAL,
    check_count       INTEGER NOT NULL DEFAULT 0,
    submit_attempts   INTEGER NOT NULL DEFAULT 0,
    not_before        REAL,
    updated_at        REAL    NOT NULL
);
-- (state, created_at, id) serves in_states() in its order without a sort.
CREATE INDEX ix_tasks_state ON tasks (state, created_at, id);
CREATE UNIQUE INDEX ux_tasks_external_task_id ON tasks (external_task_id);
CREATE INDEX ix_tasks_kling_task_id ON tasks (kling_task_id);
CREATE UNIQUE INDEX ux_tasks_callback_token ON tasks (callback_token);
CREATE INDEX ix_tasks_guild_user_created ON tasks (guild_id, user_id, created_at);
CREATE INDEX ix_tasks_created ON tasks (created_at);

CREATE TABLE guild_config (
    guild_id   INTEGER PRIMARY KEY,
    config     TEXT    NOT NULL,
    updated_at REAL    NOT NULL
);
