"""conftest: registers the suite's shared fixtures, the tests.support.plugin module.

Support modules are imported by their full name (``from tests.support.rawhttp import ...``);
their asserts are rewritten like those of the tests, so a failing helper explains itself.
"""

import pytest

pytest.register_assert_rewrite("tests.support")

pytest_plugins = ["tests.support.plugin"]
