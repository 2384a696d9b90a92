"""proxy.code_stamp: what a worker compares with its supervisor's to refuse running on files
installed since the supervisor started (proxy/agent.py, admin/workers.py)."""

from __future__ import annotations

import os

import proxy
from proxy import code_stamp


def install(root) -> str:
    package = root / "proxy"
    package.mkdir()
    (package / "__init__.py").write_text("# a data plane\n")
    (package / "route.py").write_text("ROUTE = 1\n")
    (package / "__pycache__").mkdir()
    return str(package)


def test_the_same_files_give_the_same_stamp_and_the_running_one_is_taken_at_import(tmp_path):
    package = install(tmp_path)
    assert code_stamp(package) == code_stamp(package)
    assert proxy.CODE_STAMP == code_stamp()       # nothing was installed over this checkout meanwhile


def test_a_file_rewritten_added_or_a_shared_library_replaced_changes_the_stamp(tmp_path):
    package = install(tmp_path)
    first = code_stamp(package)
    route = os.path.join(package, "route.py")
    st = os.stat(route)
    os.utime(route, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))    # same size, written again
    second = code_stamp(package)
    assert second != first
    (tmp_path / "proxy" / "health.py").write_text("")
    third = code_stamp(package)
    assert third not in (first, second)
    (tmp_path / "cutover_dataplane__mypyc.so").write_bytes(b"\0")        # the compiled group's library
    assert code_stamp(package) not in (first, second, third)


def test_what_python_caches_and_other_folders_beside_it_do_not_count(tmp_path):
    package = install(tmp_path)
    first = code_stamp(package)
    (tmp_path / "proxy" / "__pycache__" / "route.cpython-311.pyc").write_bytes(b"cache")
    (tmp_path / "admin").mkdir()
    (tmp_path / "admin" / "cli.py").write_text("")
    assert code_stamp(package) == first
