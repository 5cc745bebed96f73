DROP TABLE ofx_state_quarantine;
DROP TABLE ofx_state_snapshots;
DROP TABLE ofx_stream_events;
