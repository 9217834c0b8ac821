-- 2: when retention removed a task's files, so the hourly cleanup stops re-reading old rows.
-- Store-only (not on TaskRecord): nothing but the cleanup reads it.
ALTER TABLE tasks ADD COLUMN files_removed_at REAL;
-- Holds only the tasks whose files are still kept: the cleanup's scan stays small.
CREATE INDEX ix_tasks_files_kept ON tasks (created_at, id) WHERE files_removed_at IS NULL;
