"""admin.story: the deploy-story tools, run by the ``cutover`` CLI (admin/cli.py).

- drill.py: ``cutover drill``, a flip and a rollback under probes, with recovery times;
- schema_check.py: ``cutover schema-check``, migrations that break the version still serving;
- demo.py: ``cutover demo``, the whole story on loopback, with a report;
- demo_app.py: the demo's orders service (v1 and v2 on one SQLite database).

They reach the admin API only through admin/client.py's AdminClient, as any script would,
and never hold a data-plane object: what they know of the router (its listeners, the live
route) comes from ``GET /v1/status``. Probes and load go to the router's listeners as plain
HTTP. Nothing else in admin/ imports this package except cli.py.
"""
