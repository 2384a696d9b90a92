"""admin/ uses no ``assert`` for control flow and no private attribute of an aiohttp site.

Source checks, no sockets. An ``assert`` vanishes under ``python -O``, so a check that
matters raises a named error instead. The bound port of a listener comes from aiohttp's
public ``AppRunner.addresses``, not from a site's ``_server``.
"""

from __future__ import annotations

import ast

from tests.support.paths import ROOT

ADMIN = ROOT / "admin"


def _nodes(kind: type) -> list[tuple[str, int, ast.AST]]:
    found = []
    for path in sorted(ADMIN.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        found += [(str(path.relative_to(ROOT)), node.lineno, node) for node in ast.walk(tree)
                  if isinstance(node, kind)]
    return found


def test_no_admin_module_uses_assert_for_control_flow():
    asserts = [(path, line) for path, line, _ in _nodes(ast.Assert)]
    assert asserts == []


def test_no_admin_module_reads_an_aiohttp_site_private_server():
    reads = [(path, line) for path, line, node in _nodes(ast.Attribute) if node.attr == "_server"]
    assert reads == []
