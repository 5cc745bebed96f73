CREATE TABLE ofx_operations_autoincrement (
    idx INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    uuid TEXT NOT NULL UNIQUE,
    host_id TEXT NOT NULL,
    logged_at BIGINT NOT NULL,
    committed_at BIGINT NOT NULL,
    command_name TEXT NOT NULL,
    command_json TEXT NOT NULL,
    items_json TEXT NOT NULL,
    nested_json TEXT NOT NULL,
    xid BIGINT
);
INSERT INTO ofx_operations_autoincrement
SELECT idx, uuid, host_id, logged_at, committed_at, command_name, command_json, items_json,
       nested_json, xid
FROM ofx_operations;
DROP TABLE ofx_operations;
ALTER TABLE ofx_operations_autoincrement RENAME TO ofx_operations;
-- The counter starts past what was ever used.
DELETE FROM sqlite_sequence WHERE name = 'ofx_operations';
INSERT INTO sqlite_sequence (name, seq)
SELECT 'ofx_operations', MAX(COALESCE((SELECT MAX(idx) FROM ofx_operations), 0),
                             (SELECT trimmed_through FROM ofx_log_trims));
