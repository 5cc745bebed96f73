DROP TABLE ofx_events;
