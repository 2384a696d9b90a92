"""The demo application: a small orders service in two versions sharing one SQLite database.

``cutover demo`` runs v1 as blue and v2 as green. v2 needs a new column,
added the expand/contract way: MIGRATION_V2 only adds a nullable column with
a default, so v1 keeps working on the migrated schema (and a rollback to v1
is safe). Every answer names the version, environment and server.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time

from aiohttp import web

COUNTS = web.AppKey("counts", dict)

SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS orders (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    item TEXT NOT NULL,
    created REAL NOT NULL
);
"""

# v2's migration, expand step only: the column v1 does not know is nullable with a default.
MIGRATION_V2 = """-- v2: orders get a free-text note (expand step; v1 keeps working)
ALTER TABLE orders ADD COLUMN note TEXT DEFAULT '';
CREATE INDEX IF NOT EXISTS orders_created ON orders (created);
"""


def prepare_database(path: str) -> None:
    """prepare_database: create v1's schema (idempotent)."""
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA_V1)


def migrate_v2(path: str) -> None:
    """migrate_v2: apply MIGRATION_V2 unless the column is already there."""
    with sqlite3.connect(path) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(orders)")]
        if "note" not in columns:
            db.executescript(MIGRATION_V2)


def make_demo_app(version: str, env: str, server: int, db_path: str) -> web.Application:
    """make_demo_app: the demo service of ``version`` running as server ``server`` of ``env``."""
    counts = {"requests": 0, "fail": False}
    db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA busy_timeout=2000")

    async def index(request: web.Request) -> web.Response:
        counts["requests"] += 1
        if counts["fail"]:
            return web.json_response({"version": version, "ok": False}, status=500)
        delay = float(request.query.get("delay", "0"))
        if delay:
            await asyncio.sleep(min(delay, 30.0))
        return web.json_response({"version": version, "env": env, "server": server, "ok": True})

    async def create_order(request: web.Request) -> web.Response:
        item = request.query.get("item", "book")
        if version == "v1":
            db.execute("INSERT INTO orders (item, created) VALUES (?, ?)", (item, time.time()))
        else:
            db.execute("INSERT INTO orders (item, created, note) VALUES (?, ?, ?)",
                       (item, time.time(), f"via {version}"))
        total = db.execute("SELECT COUNT(*) FROM orders").fetchone()[0]
        return web.json_response({"version": version, "ok": True, "orders": total})

    async def healthz(request: web.Request) -> web.Response:
        db.execute("SELECT 1 FROM orders LIMIT 1").fetchall()
        return web.Response(text="ok\n")

    async def fingerprint(request: web.Request) -> web.Response:
        body = {"version": version, "build": f"{version}-{server}", "database": "sqlite",
                "tables": ["orders"], "features": {"orders": True, "payments": False}}
        return web.Response(text=json.dumps(body), content_type="application/json")

    async def fail(request: web.Request) -> web.Response:
        counts["fail"] = request.query.get("on", "1") == "1"
        return web.json_response(counts)

    async def close_db(app: web.Application) -> None:
        db.close()

    app = web.Application()
    app[COUNTS] = counts
    app.router.add_get("/", index)
    app.router.add_post("/orders", create_order)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/__fingerprint", fingerprint)
    app.router.add_post("/__fail", fail)
    app.on_cleanup.append(close_db)
    return app


async def serve_app(app: web.Application, port: int = 0, shutdown_timeout: float = 1.0) -> tuple[web.AppRunner, int]:
    """serve_app: run ``app`` on 127.0.0.1:``port`` (0 = a free one); returns the runner and the port.

    Used by DemoServer and by the tests' own backends.
    """
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, runner.addresses[0][1]     # the one site's socket, as bound


class DemoServer:
    """DemoServer: one running demo application on an ephemeral loopback port."""

    def __init__(self, version: str, env: str, server: int, db_path: str) -> None:
        self.app = make_demo_app(version, env, server, db_path)
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> "DemoServer":
        self.runner, self.port = await serve_app(self.app)
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
