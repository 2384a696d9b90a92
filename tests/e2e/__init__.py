"""tests.e2e: tests that start real proxies, backends, admin servers or processes on loopback."""
