"""paths: where the tests find the checkout they run against and their fixture files.

ROOT is the checkout the suite runs in (the repository, or the compiled copy .ci/run makes
with bench/build.py tree); tests read its sources, config/ and Dockerfile, and run the CLI
with it as the working directory.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS = ROOT / "tests" / "fixtures" / "migrations"
