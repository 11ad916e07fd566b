"""Local development: the embedded Postgres and `make run`."""
