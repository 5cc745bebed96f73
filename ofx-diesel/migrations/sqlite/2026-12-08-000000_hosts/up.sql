-- One row per host (hub) that reads the log, upserted by its heartbeat (`DbSettings::host_heartbeat`)
-- with where its log reader is: `read_cursor` the last index read (-1 before the first read),
-- `replayed_through` the index up to which every operation is replayed (NULL while unknown),
-- `replayed` the operations replayed. Times are µs since the epoch on the host's own clock;
-- `heartbeat_period` (µs) tells readers of the table when a row is stale; `stopped_at` is set
-- when the host stopped cleanly. Rows silent longer than `DbSettings::host_retention` are
-- deleted by the heartbeats.
CREATE TABLE ofx_hosts (
    host_id TEXT PRIMARY KEY NOT NULL,
    host_name TEXT NOT NULL,
    pid BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    heartbeat_period BIGINT NOT NULL,
    stopped_at BIGINT,
    read_cursor BIGINT NOT NULL,
    replayed_through BIGINT,
    replayed BIGINT NOT NULL
);
