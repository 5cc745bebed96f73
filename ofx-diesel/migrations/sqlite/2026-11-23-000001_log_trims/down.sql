DROP TABLE ofx_log_trims;
