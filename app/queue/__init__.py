"""The queue as workers see it: claiming, leases, hand-back and recovery (the only SKIP LOCKED
in the code), the LISTEN connection, and the registry of workers."""
