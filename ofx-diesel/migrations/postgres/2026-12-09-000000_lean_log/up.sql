-- The trimmer finds what to trim by the primary key (the oldest rows, in index order): the
-- index on `logged_at` is no longer read, and cost every commit one more page written.
DROP INDEX IF EXISTS ofx_operations_logged_at;
