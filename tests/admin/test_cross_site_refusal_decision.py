"""The pure decision behind the admin API's cross-site refusals (admin/origin.py), table-tested.

A mutation is refused ``cross_origin`` when its Origin or Sec-Fetch-Site names another site,
and ``forbidden_host`` when its Host is not the listener's (a rebound DNS name); loopback
listeners take their aliases, a wildcard listener any host. The same refusals on real
stacks are tests/e2e/test_admin_cross_site_mutations.py.
"""

from __future__ import annotations

import pytest

from admin.config import Address
from admin.origin import AdminListener, refusal

LOOPBACK = AdminListener.of(Address("127.0.0.1", 9901))
EPHEMERAL = AdminListener.of(Address("127.0.0.1", 0))
WILDCARD = AdminListener.of(Address("0.0.0.0", 9901))
NAMED = AdminListener.of(Address("10.0.0.5", 9901))


@pytest.mark.parametrize("listener,bound,host,origin,site,code", [
    # non-browser clients: no Origin, no Sec-Fetch-Site
    (LOOPBACK, 9901, "127.0.0.1:9901", None, None, None),
    (LOOPBACK, 9901, "localhost:9901", None, None, None),
    (LOOPBACK, 9901, "LOCALHOST:9901", None, None, None),
    (LOOPBACK, 9901, "[::1]:9901", None, None, None),
    (EPHEMERAL, 43210, "127.0.0.1:43210", None, None, None),
    (WILDCARD, 9901, "cutover.example:9901", None, None, None),
    (WILDCARD, 9901, "10.1.2.3:8443", None, None, None),
    (NAMED, 9901, "10.0.0.5:9901", None, None, None),
    # a same-origin page (the dashboard to come)
    (LOOPBACK, 9901, "127.0.0.1:9901", "http://127.0.0.1:9901", "same-origin", None),
    (LOOPBACK, 9901, "localhost:9901", "http://localhost:9901", None, None),
    (LOOPBACK, 9901, "127.0.0.1:9901", None, "none", None),
    (WILDCARD, 9901, "cutover.example:9901", "http://cutover.example:9901", "same-origin", None),
    # cross-site pages
    (LOOPBACK, 9901, "127.0.0.1:9901", "http://evil.example", None, "cross_origin"),
    (LOOPBACK, 9901, "127.0.0.1:9901", "http://evil.example", "cross-site", "cross_origin"),
    (LOOPBACK, 9901, "127.0.0.1:9901", None, "cross-site", "cross_origin"),
    (LOOPBACK, 9901, "127.0.0.1:9901", None, "same-site", "cross_origin"),      # another port on localhost
    (LOOPBACK, 9901, "127.0.0.1:9901", "http://127.0.0.1:3000", None, "cross_origin"),
    (LOOPBACK, 9901, "127.0.0.1:9901", "http://localhost:9901", None, "cross_origin"),
    (LOOPBACK, 9901, "127.0.0.1:9901", "https://127.0.0.1:9901", None, "cross_origin"),
    (LOOPBACK, 9901, "127.0.0.1:9901", "null", None, "cross_origin"),
    (LOOPBACK, 9901, "127.0.0.1:9901", "not a url", None, "cross_origin"),
    (WILDCARD, 9901, "cutover.example:9901", "http://evil.example", None, "cross_origin"),
    # DNS rebinding: the page's own name in Host, its Origin agreeing
    (LOOPBACK, 9901, "evil.example:9901", "http://evil.example:9901", None, "forbidden_host"),
    (LOOPBACK, 9901, "evil.example:9901", None, None, "forbidden_host"),
    (LOOPBACK, 9901, "127.0.0.1:1234", None, None, "forbidden_host"),
    (LOOPBACK, 9901, "127.0.0.1", None, None, "forbidden_host"),              # means port 80
    (LOOPBACK, 9901, None, None, None, "forbidden_host"),
    (LOOPBACK, 9901, "127.0.0.1:99999", None, None, "forbidden_host"),
    (LOOPBACK, 9901, "127.0.0.1:9901 x", None, None, "forbidden_host"),
    (EPHEMERAL, 43210, "127.0.0.1:0", None, None, "forbidden_host"),
    (NAMED, 9901, "localhost:9901", None, None, "forbidden_host"),            # aliases only on loopback
])
def test_refusal_decides_by_origin_fetch_site_and_host(listener, bound, host, origin, site, code):
    refused = refusal(listener, bound, host, origin, site)
    if code is None:
        assert refused is None, str(refused)
    else:
        assert refused is not None and refused.status == 403 and refused.code == code, refused
        assert str(refused)
