-- Transactional maps (see `maps`): one row per entry, the key and the value as JSON. Their
-- changes are recorded, in the same transaction, in the stream `ofx.maps` of
-- `ofx_stream_events`, whose dense positions are the commit sequence.
CREATE TABLE ofx_map_entries (
    map TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (map, key)
);
