"""The deploy-story tools (admin/story/) reach the router only through AdminClient and its listeners.

Source checks, no sockets: the story package holds the four tools and only the CLI imports
them; no admin path is spelled in the story (every admin call is an AdminClient method, so
the paths live in admin/client.py); no story module reads a data-plane or controller object
off serve's Running (the listeners and the route come from ``GET /v1/status``).
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.paths import ROOT

ADMIN = ROOT / "admin"
STORY = ADMIN / "story"
TOOLS = {"drill", "demo", "demo_app", "schema_check"}


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


def _imported_modules(path: Path) -> set[str]:
    """_imported_modules: every module ``path`` imports, absolute, as admin.<...> for relative imports."""
    package = ".".join(path.relative_to(ADMIN.parent).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - (node.level - 1)] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _strings(tree: ast.Module) -> list[tuple[int, str]]:
    """_strings: the string constants of a module other than its docstrings, with their lines."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_the_story_tools_live_in_admin_story_with_a_package_docstring():
    assert {p.stem for p in STORY.glob("*.py")} == TOOLS | {"__init__"}
    assert ast.get_docstring(_tree(STORY / "__init__.py"))
    assert not [name for name in TOOLS if (ADMIN / f"{name}.py").exists()]


def test_only_the_cli_imports_the_story_tools():
    story_modules = {"admin.story"} | {f"admin.story.{name}" for name in TOOLS}
    importers = sorted(str(path.relative_to(ADMIN.parent)) for path in ADMIN.rglob("*.py")
                       if STORY not in path.parents and _imported_modules(path) & story_modules)
    assert importers == ["admin/cli.py"]


def test_the_story_spells_no_admin_path():
    # Every admin call goes through AdminClient, which holds the paths (/v1/..., /metrics).
    spelled = [(path.name, line, text) for path in STORY.glob("*.py")
               for line, text in _strings(_tree(path)) if "/v1/" in text]
    assert spelled == []


def test_the_story_imports_the_admin_client_for_its_admin_calls():
    for name in ("drill", "demo"):
        assert "admin.client.AdminClient" in _imported_modules(STORY / f"{name}.py"), name


def test_the_story_reads_no_data_plane_or_controller_object_off_running():
    reads = [(path.name, node.lineno, node.attr) for path in STORY.glob("*.py")
             for node in ast.walk(_tree(path))
             if isinstance(node, ast.Attribute) and node.attr in ("proxy", "controller")]
    assert reads == []
