DROP TABLE ofx_map_entries;
