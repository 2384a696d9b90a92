"""admin/jsonbody.py's parse_json_object: an admin request body is a JSON object, bounded in depth,
without duplicate keys; anything else is a 400 ``bad_request`` naming the problem. The same
bodies sent to a real stack are tests/e2e/test_admin_hostile_input.py.
"""

from __future__ import annotations

import pytest

from admin.controller import ControlError
from admin.jsonbody import MAX_DEPTH, parse_json_object


@pytest.mark.parametrize("body,names", [
    (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "deep"),
    (b'{"to": "green", "to": "blue"}', "duplicate"),
    (b"{", "not valid JSON"),
    (b"\xff\xfe{}", "JSON"),
    (b'{"reason": "x"} trailing', "not valid JSON"),
    (b'{"if_generation": 1' + b"0" * 5000 + b"}", "not valid JSON"),
    (b"[]", "JSON object"),
    (b"null", "JSON object"),
], ids=["too-deep", "duplicate-key", "truncated", "not-utf8", "trailing", "huge-int", "list", "null"])
def test_parse_json_object_names_the_problem(body, names):
    with pytest.raises(ControlError) as caught:
        parse_json_object(body)
    assert caught.value.status == 400 and caught.value.code == "bad_request"
    assert names in str(caught.value), str(caught.value)


@pytest.mark.parametrize("body,expected", [
    (b"", {}), (b"  \r\n", {}), (b"{}", {}),
    (b'{"reason": "[[[ not nesting ]]] \\" {{"}', {"reason": '[[[ not nesting ]]] " {{'}),
    (b'{"a": ' + b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1) + b"}", {"a": "nested"}),
], ids=["empty", "blank", "object", "brackets-in-strings", "at-the-depth-limit"])
def test_parse_json_object_accepts(body, expected):
    data = parse_json_object(body)
    if expected == {"a": "nested"}:
        assert isinstance(data["a"], list)
    else:
        assert data == expected
