-- The operation log: one row per committed operation, written in the transaction of the
-- command's own writes. `idx` is the readers' cursor; AUTOINCREMENT keeps it from reusing the
-- values of trimmed rows.
CREATE TABLE ofx_operations (
    idx INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
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
