"""build — the compiled cutover that `pip install .` ships, for the bench and for CI.

    python bench/build.py venv [DIR]   # install it into DIR (default bench/results/venv-compiled),
                                       # print the path of its `cutover`
    python bench/build.py tree DIR     # copy this checkout to DIR with the compiled modules in
                                       # place, so the test suite can run against them there

Both build a wheel of this checkout with pip (setup.py compiles the data plane's hot modules
with mypyc) and exit 1 when the wheel holds no compiled module: a run that meant to measure or
test the compiled build must never fall back to pure Python silently.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VENV = ROOT / "bench" / "results" / "venv-compiled"
# Not copied into a tree: environments, build output and caches.
SKIP = shutil.ignore_patterns(".venv*", "build", "results", "__pycache__", "*.egg-info", ".pytest_cache",
                              ".mypy_cache", ".git", "*.so")


class BuildError(Exception):
    """BuildError: the wheel could not be built, or it holds no compiled module."""


def build_wheel(out: Path) -> Path:
    """build_wheel: a wheel of this checkout in ``out``; raises BuildError unless it is compiled.

    It is built from a clean copy of the sources, so no earlier build output can slip in.
    """
    source = out / "source"
    shutil.copytree(ROOT, source, ignore=SKIP)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                             "--wheel-dir", str(out), str(source)], capture_output=True, text=True,
                            env={**os.environ, "CUTOVER_COMPILE": "require"})
    wheels = sorted(out.glob("cutover-*.whl"))
    if result.returncode != 0 or not wheels:
        raise BuildError(f"pip wheel failed:\n{result.stdout}{result.stderr}".strip())
    with zipfile.ZipFile(wheels[-1]) as wheel:
        names = wheel.namelist()
    if not any(name.startswith("cutover_dataplane__mypyc") for name in names) or \
            not any(name.startswith("proxy/") and name.endswith(".so") for name in names):
        raise BuildError("the wheel holds no compiled data plane (a C compiler and the Python "
                         f"headers are needed)\n{result.stderr}".strip())
    return wheels[-1]


def install_venv(venv: Path) -> Path:
    """install_venv: the compiled wheel installed into ``venv`` (created on first use); its cutover."""
    with tempfile.TemporaryDirectory(prefix="cutover-wheel-") as tmp:
        wheel = build_wheel(Path(tmp))
        pip = venv / "bin" / "pip"
        if not pip.exists():
            _run([sys.executable, "-m", "venv", str(venv)])
            _run([str(pip), "install", "--quiet", str(wheel)])
        _run([str(pip), "install", "--quiet", "--force-reinstall", "--no-deps", str(wheel)])
    return venv / "bin" / "cutover"


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError(f"{' '.join(argv)} failed:\n{result.stdout}{result.stderr}".strip())


def compiled_tree(dest: Path) -> Path:
    """compiled_tree: this checkout copied to ``dest`` with the wheel's compiled modules beside the sources."""
    shutil.copytree(ROOT, dest, ignore=SKIP, dirs_exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cutover-wheel-") as tmp:
        with zipfile.ZipFile(build_wheel(Path(tmp))) as wheel:
            for name in wheel.namelist():
                if name.endswith(".so"):
                    wheel.extract(name, dest)
    return dest


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("venv", "tree") or (argv[0] == "tree" and len(argv) != 2):
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        print("usage: build.py venv [DIR] | build.py tree DIR", file=sys.stderr)
        return 2
    try:
        if argv[0] == "venv":
            print(install_venv(Path(argv[1]) if len(argv) > 1 else DEFAULT_VENV))
        else:
            print(compiled_tree(Path(argv[1])))
    except BuildError as exc:
        print(f"build: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
