DROP TABLE ofx_operations;
