-- How far the trimmer has deleted: a reader whose cursor is below it may have missed rows, and
-- must invalidate everything (rather than guessing from the oldest surviving row, which a
-- transaction still in flight could precede).
CREATE TABLE ofx_log_trims (
    id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    trimmed_through BIGINT NOT NULL
);
INSERT INTO ofx_log_trims (id, trimmed_through) VALUES (1, 0);
