DROP TABLE ofx_hosts;
