-- The log without AUTOINCREMENT: it made every commit write the `sqlite_sequence` row too (one
-- more page). An insert now names its index, one past the largest of the newest row and the
-- trimmer's `trimmed_through`, so an index is still never reused, even after the trimmer
-- emptied the table. SQLite cannot drop AUTOINCREMENT in place: the table is rebuilt.
CREATE TABLE ofx_operations_lean (
    idx INTEGER PRIMARY KEY NOT NULL,
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
INSERT INTO ofx_operations_lean
    (idx, uuid, host_id, logged_at, committed_at, command_name, command_json, items_json,
     nested_json, xid)
SELECT idx, uuid, host_id, logged_at, committed_at, command_name, command_json, items_json,
       nested_json, xid
FROM ofx_operations;
-- Indexes a trimmed table's AUTOINCREMENT counter reached are not reused either: the counter
-- is carried into `trimmed_through` when it is ahead of every row left (the rows between were
-- trimmed, or rolled back and never seen).
UPDATE ofx_log_trims
SET trimmed_through = (SELECT seq FROM sqlite_sequence WHERE name = 'ofx_operations')
WHERE (SELECT seq FROM sqlite_sequence WHERE name = 'ofx_operations')
      > MAX(trimmed_through, COALESCE((SELECT MAX(idx) FROM ofx_operations), 0));
DROP TABLE ofx_operations;
ALTER TABLE ofx_operations_lean RENAME TO ofx_operations;
DELETE FROM sqlite_sequence WHERE name = 'ofx_operations';
