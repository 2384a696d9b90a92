"""cutover's data plane (see setup.py for how its hot modules are built).

What admin/ may import from it is exported here: the Route it sends, the snapshot
types it reads (snapshot.py), the Router and Proxy that admin/plane.py and serve's
start-up build, the frozen Settings those are built from (settings.py; admin/config.py
makes them from the YAML config), the event loop serve runs on, the supervisor channel's
framing and the snapshot merge admin/workers.py uses for worker processes (whose own
entry point is ``python -m proxy.agent``), how every process writes its log (logs.py), and
the TLS settings and the contexts built from them (tls.py: admin/config.py checks certificate
files with them, the admin listener serves with a ServerTLS), settle_heap (heap.py: every
process keeps its start-up objects out of the garbage collector's passes), the memory the
workers count their held requests in (hold.py: tally_memory, clear_slot), build(), and CODE_STAMP with
CODE_CHANGED_STATUS (a worker started from files that changed since its supervisor started
refuses to run: proxy/agent.py). admin/ reaches no other module
of proxy/ and holds no live data-plane object outside admin/plane.py and admin/workers.py.
"""

import hashlib
import os
import stat

from .backends import LATENCY_BUCKETS
from .channel import Channel
from .flow import LISTEN_BACKLOG
from .heap import settle as settle_heap
from .hold import clear_slot, tally_memory
from .logs import FORMATS as LOG_FORMATS
from .logs import configure as configure_logging
from .route import Route
from .router import Router, serving
from .server import Proxy, new_event_loop
from .settings import (AccessLogConfig, Address, CertificateFiles, EnvironmentConfig, HealthCheckConfig, LimitsConfig,
                       ListenerTLS, Settings, TimeoutsConfig, UpstreamTLS)
from .snapshot import (UPSTREAM_ERROR_KINDS, DrainSnapshot, EnvironmentSnapshot, RouterSnapshot, ServerSnapshot,
                       Snapshot, merge_drains)
from .snapshot import merge as merge_snapshots
from .tls import CertificateError, ServerTLS, load_certificate, upstream_context

__all__ = ["CODE_CHANGED_STATUS", "CODE_STAMP", "LATENCY_BUCKETS", "LISTEN_BACKLOG", "LOG_FORMATS", "UPSTREAM_ERROR_KINDS", "AccessLogConfig", "Address", "Channel", "DrainSnapshot",
           "CertificateError", "CertificateFiles", "EnvironmentConfig", "EnvironmentSnapshot", "HealthCheckConfig",
           "LimitsConfig", "ListenerTLS", "Proxy", "Route", "Router",
           "RouterSnapshot", "ServerSnapshot", "ServerTLS", "Settings", "Snapshot", "TimeoutsConfig", "UpstreamTLS", "build", "clear_slot",
           "configure_logging", "load_certificate", "merge_drains",
           "merge_snapshots", "new_event_loop", "serving", "settle_heap", "tally_memory", "upstream_context"]


def build() -> str:
    """build: "compiled (mypyc)" when the hot path runs as C extensions, else "pure Python"."""
    from . import exchange
    return "pure Python" if exchange.__file__.endswith(".py") else "compiled (mypyc)"


# The exit status of a worker whose data plane is not its supervisor's (proxy/agent.py).
CODE_CHANGED_STATUS = 78


def code_stamp(here: str | None = None) -> str:
    """code_stamp: what identifies the data plane's files as they are now: each file of this
    package (or of the folder ``here``) and the compiled modules' shared library beside it, by
    name, size and modification time. An install over the running one (pip install, a package
    upgrade) changes it."""
    here = here or os.path.dirname(os.path.abspath(__file__))
    parent = os.path.dirname(here)
    digest = hashlib.sha256()
    for folder, names in ((here, sorted(os.listdir(here))),
                          (parent, sorted(n for n in os.listdir(parent) if n.startswith("cutover_dataplane")))):
        for name in names:
            try:
                st = os.stat(os.path.join(folder, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                digest.update(b"%s %d %d\n" % (name.encode(), st.st_size, st.st_mtime_ns))
    return digest.hexdigest()[:16]


# The stamp of the files this process imported the data plane from (taken as it imports it).
CODE_STAMP = code_stamp()
