-- Events with guaranteed delivery: commands an operation produced, stored in its transaction,
-- claimed by one host's processor under a lease and marked done in the transaction of their own
-- operation. `state`: 0 pending, 1 done, 2 dead. `lease_token` is the fencing number: every claim
-- increments it, and only the holder of the current one may complete or fail the event.
CREATE TABLE ofx_events (
    uuid TEXT PRIMARY KEY NOT NULL,
    operation_uuid TEXT NOT NULL,
    host_id TEXT NOT NULL,
    command_name TEXT NOT NULL,
    command_json TEXT NOT NULL,
    event_key TEXT,
    logged_at BIGINT NOT NULL,
    due_at BIGINT NOT NULL,
    state INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_token BIGINT NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_until BIGINT,
    last_error TEXT,
    finished_at BIGINT
);
-- What a processor claims: pending events by due time.
CREATE INDEX ofx_events_pending ON ofx_events (due_at) WHERE state = 0;
-- What the trimmer deletes and the dead-event API lists.
CREATE INDEX ofx_events_finished ON ofx_events (state, finished_at) WHERE state <> 0;
