CREATE INDEX ofx_operations_logged_at ON ofx_operations (logged_at);
