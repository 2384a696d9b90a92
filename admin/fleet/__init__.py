"""admin.fleet: the fleet mode's home (SPEC §9.2) and the only place in cutover that knows etcd.

Several routers share one state in etcd: the etcd state store, the replica loop and the ack
barrier live here, all standing on `admin.fleet.etcd`, an asyncio client for etcd's v3 JSON
gateway over aiohttp. Nothing outside this package imports that client or speaks etcd's API;
the rest of admin/ sees a fleet only through the `StateStore` protocol (admin/state.py) and
the values this package hands out.
"""
