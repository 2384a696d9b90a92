"""Build: cutover's data plane hot path, compiled with mypyc where it can be.

The modules in COMPILED are plain, type-checked Python ([tool.mypy] files in
pyproject.toml). A regular install (`pip install .`, the Docker image)
compiles them with mypyc into C extensions, which run the same code about a
third faster; an editable install (`pip install -e .`) leaves them as Python
so that edits take effect at once. CUTOVER_COMPILE=0 skips compiling, and a
machine without a C compiler falls back to pure Python with a warning.
`cutover version` says which build is running.
"""

import os
import sys
import tomllib
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

# The modules mypy checks ([tool.mypy] files) are the ones compiled.
with open(Path(__file__).parent / "pyproject.toml", "rb") as f:
    COMPILED = tomllib.load(f)["tool"]["mypy"]["files"]


class OptionalBuildExt(build_ext):
    """OptionalBuildExt: a failed compile leaves the pure Python modules in place."""

    def run(self):
        try:
            super().run()
        except Exception as exc:   # no compiler, no Python headers: run as Python
            print(f"cutover: compiling the data plane failed ({exc}); it runs as pure Python",
                  file=sys.stderr)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            print(f"cutover: compiling {ext.name} failed ({exc}); it runs as pure Python",
                  file=sys.stderr)


def ext_modules():
    editable = any(cmd in sys.argv for cmd in ("editable_wheel", "develop"))
    if editable or os.environ.get("CUTOVER_COMPILE", "1") == "0":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("cutover: mypy is not installed; the data plane runs as pure Python", file=sys.stderr)
        return []
    return mypycify(COMPILED, opt_level="3", group_name="cutover_dataplane")


setup(ext_modules=ext_modules(), cmdclass={"build_ext": OptionalBuildExt})
