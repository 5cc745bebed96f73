-- Schema symmetry with PostgreSQL, where `xid` is the id of the transaction that wrote the row.
-- SQLite has no transaction ids: always NULL here.
ALTER TABLE ofx_operations ADD COLUMN xid BIGINT;
