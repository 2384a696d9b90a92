"""requestid: the prefix of the request ids this process makes up (SPEC §12).

A request whose client sent no sane X-Request-Id (headers.sane_request_id) gets
``<prefix><counter in hex>``: the prefix is 16 random hex digits and a dash, drawn once
per Proxy (every worker process and every restart draws its own), the counter the Proxy's
count of ids made so far. So making an id costs one increment and one formatting, no
system call, and ids stay unique across workers and restarts (two prefixes collide with
a chance of 2**-64). Proxy.__init__ calls ``new_prefix``; Exchange.__init__ forms the ids.
"""

from __future__ import annotations

import os


def new_prefix() -> bytes:
    """new_prefix: 16 random hex digits and "-", e.g. b"9f2c4e7a1b3d5f60-"; called once per Proxy."""
    return os.urandom(8).hex().encode() + b"-"
