"""tests.admin: socket-free or single-component tests of the control plane (config, state store,
request table and OpenAPI document, gates and analysis on fake snapshots, CLI parsing, the
idempotency cache, the admin side's import rules)."""
