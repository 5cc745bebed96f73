-- The operation log: one row per committed operation, written in the transaction of the
-- command's own writes. `idx` is the readers' cursor. Concurrent transactions may commit their
-- rows out of `idx` order: readers track the gaps (see the log reader).
CREATE TABLE ofx_operations (
    idx BIGSERIAL PRIMARY KEY,
    uuid TEXT NOT NULL UNIQUE,
    host_id TEXT NOT NULL,
    logged_at BIGINT NOT NULL,
    committed_at BIGINT NOT NULL,
    command_name TEXT NOT NULL,
    command_json TEXT NOT NULL,
    items_json TEXT NOT NULL,
    nested_json TEXT NOT NULL
);
CREATE INDEX ofx_operations_logged_at ON ofx_operations (logged_at);
