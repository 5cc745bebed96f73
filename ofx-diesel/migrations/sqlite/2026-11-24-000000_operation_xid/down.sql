ALTER TABLE ofx_operations DROP COLUMN xid;
