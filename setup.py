"""Build: cutover's data plane hot path, compiled with mypyc where it can be.

The modules in COMPILED are plain, type-checked Python ([tool.mypy] files in
pyproject.toml). Building a wheel (`pip install .`, the Docker image,
bench/build.py) compiles them with mypyc into C extensions, which run the same
code with about half the interpreter overhead; an editable install
(`pip install -e .`) never compiles, so edits take effect at once.
CUTOVER_COMPILE=0 skips compiling. When compiling fails (no C compiler, no
Python headers, a type error) the wheel holds no compiled module at all and
the data plane runs as pure Python, with a warning (pip shows it with -v);
CUTOVER_COMPILE=require makes such a build fail instead (the Docker image and
bench/build.py use it). `cutover version` says which build is running.
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


MODE = os.environ.get("CUTOVER_COMPILE", "1")   # "0" never, "1" when it can, "require"


def warn(message: str) -> None:
    if MODE == "require":
        raise SystemExit(f"cutover: {message} (CUTOVER_COMPILE=require)")
    print(f"cutover: {message}; the data plane runs as pure Python", file=sys.stderr)


class AllOrNothingBuildExt(build_ext):
    """AllOrNothingBuildExt: if any compiled module fails, none is kept.

    mypyc builds one shared library for the group plus a small module per
    file; a wheel with some of them would not import.
    """

    def run(self):
        self.failed = []
        try:
            super().run()
        except Exception as exc:
            self.failed.append(str(exc))
        if self.failed:
            for ext in self.extensions:
                path = self.get_ext_fullpath(ext.name)
                if os.path.exists(path):
                    os.remove(path)
            self.extensions = []
            warn(f"compiling failed ({self.failed[0]})")

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            self.failed.append(f"{ext.name}: {exc}")

    def get_outputs(self):
        return [] if self.failed else super().get_outputs()


def ext_modules():
    # Only a wheel build compiles: metadata steps (egg_info, dist_info) and
    # editable installs must not need mypy, a compiler or the dependencies.
    if not any(cmd in sys.argv for cmd in ("bdist_wheel", "build_ext")) or "editable_wheel" in sys.argv:
        return []
    if MODE == "0":
        return []
    try:
        from mypyc.build import mypycify
        return mypycify(COMPILED, opt_level="3", group_name="cutover_dataplane")
    except (Exception, SystemExit) as exc:   # mypy exits on a type error, after printing it
        warn(f"mypyc could not compile it ({exc!r}; mypy's messages are above)")
        return []


setup(ext_modules=ext_modules(), cmdclass={"build_ext": AllOrNothingBuildExt})
