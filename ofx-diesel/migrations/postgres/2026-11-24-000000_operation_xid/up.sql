-- The id of the transaction that wrote each operation row (`pg_current_xact_id()`, taken before
-- the row's `idx` is drawn from the sequence). Commit verification asks `pg_xact_status` about
-- it, so that "not committed" is said only when PostgreSQL knows the transaction aborted. NULL
-- for rows written before this column existed, or by writers that do not record it.
ALTER TABLE ofx_operations ADD COLUMN xid BIGINT;
