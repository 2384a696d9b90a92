"""tests.proxy: socket-free tests of the data plane (parsers, headers, router, drain, hold gate,
pool, selection, bucketing, snapshots, the protocols on fake transports)."""
