"""tests.support: the one package of helpers the tests share; no test module imports another.

- plugin.py     the fixtures, registered by tests/conftest.py: backends, make_proxy,
                make_stack, raw_backend, session, admin_session
- paths.py      ROOT (the checkout under test) and MIGRATIONS (the SQL fixture files)
- wait.py       eventually: the one bounded poller
- ports.py      free_port and Refused: loopback addresses nothing listens on
- stack.py      proxy_config (a Config for the test backends), QUIET_HEALTH, make_unhealthy,
                write_config and save_state (the files check-config and serve read)
- backend.py    Backend: the aiohttp test application server; set_failing
- rawhttp.py    raw HTTP/1.1 on the wire: a strict response reader, client helpers and
                RawBackend, an upstream written by hand
- adminapi.py   Admin and JsonAdmin (admin API clients), post, assert_error, scrape
- cli.py        cutover: the real CLI as a subprocess, and its assertions
- stores.py     FailingStore (a state store that fails its commits on purpose) and leftover
                (the temp file an interrupted save leaves)
- fakes.py      the data plane without sockets: FakeTransport, Rig, InFlight, Waiting,
                unstarted_proxy
- fakeplane.py  FakePlane and FakeHTTP: snapshots and gate/analysis HTTP without sockets
- openapi.py    reading the OpenAPI document: JSON pointers, $refs, jsonschema validation

A new shared helper (a real etcd for the tests, say) is a module here, imported by its full
name (``from tests.support.etcd import ...``), its fixtures added to plugin.py; a test that
starts it goes in tests/e2e/.
"""
