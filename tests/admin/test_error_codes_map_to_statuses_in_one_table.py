"""Error codes and HTTP statuses: a ControlError carries a code, api.STATUS is the one table.

The statuses below are the ones each code has always answered (SPEC §7, the OpenAPI
document); a raising site never names a status itself.
"""

from __future__ import annotations

import ast

import pytest

from admin import api, openapi
from admin.controller import ControlError
from tests.support.paths import ROOT

ADMIN = ROOT / "admin"

ANSWERED = {
    "bad_request": 400, "unknown_environment": 400, "unauthorized": 401, "forbidden": 403,
    "cross_origin": 403, "forbidden_host": 403, "not_found": 404, "method_not_allowed": 405,
    "locked": 409, "gate_failed": 409, "no_previous": 409, "no_canary": 409, "conflict": 409,
    "generation_mismatch": 412, "payload_too_large": 413, "unsupported_media_type": 415,
    "idempotency_key_reused": 422, "internal": 500, "state_unavailable": 503, "store_unavailable": 503,
    "idempotency_busy": 503, "config_invalid": 400, "restart_required": 409,
}


@pytest.mark.parametrize("code, status", sorted(ANSWERED.items()))
def test_each_code_keeps_its_status(code, status):
    assert api.STATUS[code] == status
    assert ControlError(code, "why").status == status


def test_every_code_the_openapi_document_lists_is_in_the_table():
    documented = set(openapi._ERROR_CODES) - {"http_error"}   # http_error passes aiohttp's own status on
    assert documented <= set(api.STATUS), documented - set(api.STATUS)
    assert documented == set(ANSWERED)


def test_a_control_error_keeps_its_message_and_extra_fields():
    exc = ControlError("generation_mismatch", "generation is 3, not 2", generation=3)
    assert (exc.code, str(exc), exc.extra, exc.status) == ("generation_mismatch", "generation is 3, not 2",
                                                          {"generation": 3}, 412)


def test_a_code_missing_from_the_table_answers_500():
    assert ControlError("no_such_code", "a bug").status == 500


def test_no_raising_site_names_an_http_status():
    calls, wrong = 0, []
    for path in sorted(ADMIN.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "ControlError":
                calls += 1
                first = node.args[0] if node.args else None
                if not (isinstance(first, ast.Constant) and first.value in api.STATUS):
                    wrong.append(f"{path.relative_to(ADMIN.parent)}:{node.lineno}")
    assert calls > 20                                   # the walk does find the raising sites
    assert wrong == [], f"ControlError must be raised with a code of api.STATUS first, no status: {wrong}"
