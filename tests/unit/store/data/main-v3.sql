-- A database made by the bot as it was at commit 4e1ef9b (schema version 3, before the store
-- package): that commit's store created nine tasks through its own methods (one in every state,
-- a queued one backing off after a create, one whose files retention removed) and two server
-- settings; this is sqlite3's dump of the file (Connection.iterdump) with the schema version it
-- recorded. main-v3.json holds what that store's get() and queries returned for it, and its
-- id mark file held 9. Never edit: migration 4 must carry exactly this over.
BEGIN TRANSACTION;
CREATE TABLE guild_config (
        guild_id   INTEGER PRIMARY KEY,
        config     TEXT    NOT NULL,
        updated_at REAL    NOT NULL
    );
INSERT INTO "guild_config" VALUES(5,'{"blocked_words":["x"],"channel_id":100,"daily_limit":3}',1700864032.0);
INSERT INTO "guild_config" VALUES(6,'{}',1700864032.0);
CREATE TABLE state_counts (
        state TEXT    PRIMARY KEY,
        n     INTEGER NOT NULL
    ) WITHOUT ROWID;
INSERT INTO "state_counts" VALUES('cancelled',1);
INSERT INTO "state_counts" VALUES('delivered',1);
INSERT INTO "state_counts" VALUES('failed',1);
INSERT INTO "state_counts" VALUES('processing',1);
INSERT INTO "state_counts" VALUES('queued',2);
INSERT INTO "state_counts" VALUES('submitted',1);
INSERT INTO "state_counts" VALUES('succeed',1);
INSERT INTO "state_counts" VALUES('undeliverable',1);
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
    , files_removed_at REAL);
INSERT INTO "tasks" VALUES(1,'image','simulator',1,'ext-1',NULL,'queued','{"n":2,"prompt":"p1"}','["inputs/1/subject1.png"]','["subject1"]',2,5,100,11,900,1700000001.0,NULL,NULL,NULL,NULL,NULL,'[]','[]',NULL,NULL,0,NULL,0,'tok-1',NULL,0,1,1700000031.0,1700000001.0,NULL);
INSERT INTO "tasks" VALUES(2,'video','simulator',1,'ext-2',NULL,'queued','{"duration":"10","mode":"pro","prompt":"wave"}','[]','["image1"]',1,5,100,12,901,1700000002.0,NULL,NULL,NULL,NULL,NULL,'[]','[]',NULL,NULL,0,NULL,0,'tok-2',NULL,0,0,NULL,1700000002.0,NULL);
INSERT INTO "tasks" VALUES(3,'image','simulator',1,'ext-3','k-sub','submitted','{"n":2,"prompt":"p3"}','[]','["subject1"]',2,5,100,12,902,1700000003.0,1700000003.0,NULL,NULL,NULL,NULL,'[]','[]',NULL,NULL,0,NULL,0,'tok-3',1700000008.0,0,0,NULL,1700000003.0,NULL);
INSERT INTO "tasks" VALUES(4,'video','simulator',1,'ext-4','k-proc','processing','{"prompt":"run"}','[]','[]',1,5,100,13,903,1700000004.0,1700000004.0,1700000007.0,NULL,NULL,'processing','[]','[]',NULL,NULL,0,NULL,0,'tok-4',1700000017.0,2,0,NULL,1700000007.0,NULL);
INSERT INTO "tasks" VALUES(5,'image','simulator',1,'ext-5','k-ok','succeed','{"n":2,"prompt":"p5"}','[]','["subject1"]',2,5,100,11,904,1700000008.0,1700000008.0,NULL,1700000028.0,NULL,'succeed','["https://cdn/1.png","https://cdn/2.png"]','["results/5/0.png","results/5/1.png"]','0.5',NULL,0,NULL,0,'tok-5',NULL,0,0,NULL,1700000028.0,NULL);
INSERT INTO "tasks" VALUES(6,'image','simulator',1,'ext-6','k-bad','failed','{"n":2,"prompt":"p6"}','[]','["subject1"]',2,NULL,100,13,905,1700000029.0,1700000029.0,NULL,1700000029.0,NULL,'failed','[]','[]',NULL,'Kling could not make this image: its safety check refused it.',0,NULL,0,'tok-6',NULL,0,0,NULL,1700000029.0,NULL);
INSERT INTO "tasks" VALUES(7,'image','simulator',1,'ext-7',NULL,'cancelled','{"n":2,"prompt":"p7"}','[]','["subject1"]',2,5,100,14,906,1700000030.0,NULL,NULL,1700000030.0,NULL,NULL,'[]','[]',NULL,NULL,0,NULL,1,'tok-7',NULL,0,0,NULL,1700000030.0,1700864032.0);
INSERT INTO "tasks" VALUES(8,'image','simulator',1,'ext-8','k-done','delivered','{"n":2,"prompt":"p8"}','[]','["subject1"]',2,5,100,11,907,1700000031.0,1700000031.0,NULL,1700000031.0,1700000031.0,'succeed','[]','["results/8/0.png"]','1',NULL,1,NULL,0,'tok-8',NULL,0,0,NULL,1700000031.0,NULL);
INSERT INTO "tasks" VALUES(9,'image','simulator',1,'ext-9','k-lost','undeliverable','{"n":2,"prompt":"p9"}','[]','["subject1"]',2,5,100,12,908,1700000032.0,1700000032.0,NULL,1700000032.0,1700000032.0,NULL,'[]','[]',NULL,'Kling stopped answering about this task.',5,'The bot cannot post in this channel.',0,'tok-9',NULL,0,0,NULL,1700000032.0,NULL);
CREATE INDEX ix_tasks_state ON tasks (state, created_at, id);
CREATE UNIQUE INDEX ux_tasks_external_task_id ON tasks (external_task_id);
CREATE INDEX ix_tasks_kling_task_id ON tasks (kling_task_id);
CREATE UNIQUE INDEX ux_tasks_callback_token ON tasks (callback_token);
CREATE INDEX ix_tasks_guild_user_created ON tasks (guild_id, user_id, created_at);
CREATE INDEX ix_tasks_created ON tasks (created_at);
CREATE INDEX ix_tasks_files_kept ON tasks (created_at, id) WHERE files_removed_at IS NULL;
CREATE TRIGGER tasks_count_insert AFTER INSERT ON tasks BEGIN
        INSERT INTO state_counts (state, n) VALUES (NEW.state, 1)
            ON CONFLICT (state) DO UPDATE SET n = n + 1;
    END;
CREATE TRIGGER tasks_count_delete AFTER DELETE ON tasks BEGIN
        UPDATE state_counts SET n = n - 1 WHERE state = OLD.state;
    END;
CREATE TRIGGER tasks_count_state AFTER UPDATE OF state ON tasks
    WHEN OLD.state IS NOT NEW.state BEGIN
        UPDATE state_counts SET n = n - 1 WHERE state = OLD.state;
        INSERT INTO state_counts (state, n) VALUES (NEW.state, 1)
            ON CONFLICT (state) DO UPDATE SET n = n + 1;
    END;
DELETE FROM "sqlite_sequence";
INSERT INTO "sqlite_sequence" VALUES('tasks',9);
COMMIT;
PRAGMA user_version = 3;
