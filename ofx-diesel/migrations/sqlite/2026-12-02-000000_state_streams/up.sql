-- The state service's event streams: domain events, the source of truth of projected states
-- (not the events with guaranteed delivery of ofx_events). Positions are dense per stream,
-- from 1: an append inserts at the head + 1 and a concurrent append of the same position
-- conflicts on the primary key.
CREATE TABLE ofx_stream_events (
    stream TEXT NOT NULL,
    position BIGINT NOT NULL,
    body TEXT NOT NULL,
    operation_uuid TEXT NOT NULL,
    appended_at BIGINT NOT NULL,
    PRIMARY KEY (stream, position)
);
-- Snapshots of projected states, one per projection name and version: the newest position wins.
CREATE TABLE ofx_state_snapshots (
    projection TEXT NOT NULL,
    version BIGINT NOT NULL,
    position BIGINT NOT NULL,
    saved_at BIGINT NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (projection, version)
);
-- Stream events a projection could not apply (undecodable, or rejected by its apply), kept
-- aside with the reason (`kind`: undecodable, rejected, panicked or missing); the projection went
-- on without them.
CREATE TABLE ofx_state_quarantine (
    projection TEXT NOT NULL,
    version BIGINT NOT NULL,
    stream TEXT NOT NULL,
    position BIGINT NOT NULL,
    kind TEXT NOT NULL,
    reason TEXT NOT NULL,
    quarantined_at BIGINT NOT NULL,
    PRIMARY KEY (projection, version, stream, position)
);
