"""The admin API's request table (SPEC §7): per endpoint, what a call may carry.

One ``Endpoint`` per route: its method, path, operationId and summary, and the ``Field``s
its JSON body or its query string accepts (type, range, required, description). The admin
API (api.py) checks every POST body with ``check_body`` and every query string with
``check_query``; openapi.py builds the document's request schemas and parameters from the
same table, so what is documented is what is validated. A value outside the table is a
400 ``bad_request`` whose message names the field or parameter.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from multidict import MultiMapping

from .config import HISTORY_LIMIT_MAX

from .controller import ControlError

_JSON_TYPES = {"string": "string", "boolean": "boolean", "integer": "integer", "number": "number",
               "date-time": "string", "servers": "array"}
# A server list (SPEC §12): what `environments.X.servers` takes in the config; the Controller
# checks each entry as the config does (admin/config.py parse_servers), naming "servers[i]".
_SERVER_ITEM = {"oneOf": [
    {"type": "string", "description": '"host:port" (weight 1)'},
    {"type": "object", "properties": {"address": {"type": "string", "description": "host:port"},
                                      "weight": {"type": "integer", "minimum": 1}},
     "required": ["address"], "additionalProperties": False}]}
_INTEGER = re.compile(r"-?[0-9]{1,12}")        # a query integer: decimal digits only, bounded length
_OFFSET_SPACE = re.compile(r" ([0-9]{2}:?[0-9]{2})$")   # "+02:00" after a query's + became a space


@dataclass(frozen=True, slots=True)
class Field:
    """Field: one accepted body key or query parameter, as ``check_body``/``check_query`` read it.

    ``kind`` is string, boolean, integer, number, date-time (ISO-8601, query only) or servers
    (a non-empty list of server entries, each checked later by the Controller);
    ``nullable`` lets a body carry JSON null for "not given". The bounds are inclusive
    unless ``exclusive_minimum``.
    """

    name: str
    kind: str
    description: str
    required: bool = False
    nullable: bool = False
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    non_empty: bool = False
    unit: str = ""                     # "seconds": said in the error message

    def schema(self) -> dict:
        """schema: this field as a JSON Schema 2020-12 object (openapi.py puts it in the document)."""
        kind = _JSON_TYPES[self.kind]
        out: dict[str, Any] = {"type": [kind, "null"] if self.nullable else kind,
                               "description": self.description}
        if self.kind == "date-time":
            out["format"] = "date-time"
        if self.kind == "servers":
            out["items"] = _SERVER_ITEM
            out["minItems"] = 1
        if self.minimum is not None:
            out["exclusiveMinimum" if self.exclusive_minimum else "minimum"] = _plain(self.minimum)
        if self.maximum is not None:
            out["maximum"] = _plain(self.maximum)
        if self.non_empty:
            out["minLength"] = 1
        return out

    def expectation(self) -> str:
        """expectation: what a good value is, for the error message ("an integer from 0 to 100")."""
        if self.kind == "servers":
            text = 'a non-empty list of "host:port" or {"address", "weight"}'
        elif self.kind == "boolean":
            text = "true or false"
        elif self.kind == "string":
            text = "a non-empty string" if self.non_empty else "a string"
        elif self.kind == "date-time":
            text = "an ISO-8601 time such as 2024-05-01T12:00:00Z"
        else:
            text = "an integer" if self.kind == "integer" else "a number"
            if self.unit:
                text += f" of {self.unit}"
            low, high = self.minimum, self.maximum
            if low is not None and high is not None and not self.exclusive_minimum:
                text += f" from {_plain(low)} to {_plain(high)}"
            else:
                if low is not None:
                    text += f" above {_plain(low)}" if self.exclusive_minimum else f" of at least {_plain(low)}"
                if high is not None:
                    text += f"{',' if low is not None else ''} at most {_plain(high)}"
        if self.nullable:
            text += ", or null" if "," in text else " or null"
        return text

    def check(self, value: Any) -> Any:
        """check: ``value`` from a JSON body if this field accepts it; else ControlError 400."""
        if value is None:
            if self.nullable:
                return None
        elif self.kind == "servers":
            if isinstance(value, list) and value:
                return value
        elif self.kind == "boolean":
            if isinstance(value, bool):
                return value
        elif self.kind == "string":
            if isinstance(value, str) and (value or not self.non_empty):
                return value
        elif self.kind in ("integer", "number") and not isinstance(value, bool):
            if isinstance(value, int) or (self.kind == "number" and isinstance(value, float)
                                          and math.isfinite(value)):
                if self._in_range(value):
                    return value
        raise self.refused(value)

    def parse(self, text: str) -> Any:
        """parse: a query parameter's text as this field's value; else ControlError 400."""
        if self.kind == "integer":
            if _INTEGER.fullmatch(text) and self._in_range(int(text)):
                return int(text)
        elif self.kind == "date-time":
            when = _iso_time(text)
            if when is not None:
                return when
        elif self.kind == "string":
            if text or not self.non_empty:
                return text
        raise self.refused(text, query=True)

    def refused(self, value: Any, query: bool = False) -> ControlError:
        """refused: the 400 for a bad value, naming the field and what it must be."""
        what = f'query parameter "{self.name}"' if query else f'"{self.name}"'
        return ControlError("bad_request", f"{what} must be {self.expectation()}, got {_show(value)}")

    def _in_range(self, value: float) -> bool:
        if self.minimum is not None:
            if value < self.minimum or (self.exclusive_minimum and value == self.minimum):
                return False
        return self.maximum is None or value <= self.maximum


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Endpoint: one route of the admin API and what its requests may carry."""

    name: str                      # the key in ENDPOINTS; for mutations the action api.py passes
    method: str                    # "GET" | "POST" | "PUT" | "DELETE"
    path: str
    operation_id: str              # the document's operationId: method + endpoint, camelCase
    summary: str
    body: tuple[Field, ...] = ()   # the JSON object a mutation may carry (an empty body is {})
    query: tuple[Field, ...] = ()
    auth: bool = True              # needs the bearer token (every /v1 endpoint)


_REASON = Field("reason", "string", "why, recorded in the history entry", nullable=True)
_FORCE = Field("force", "boolean", "skip the gates (a lock still refuses)")
_IF_GENERATION = Field("if_generation", "integer",
                       "compare-and-swap: refuse with 412 unless the route is at this generation",
                       nullable=True)
_WAIT = Field("wait", "boolean", "answer only when the post-flip analysis ended; the answer's "
                                 "analysis.state says passed or rolled_back")

_TABLE = (
    Endpoint("status", "GET", "/v1/status", "getStatus",
             "the live route, hold, lock, weights, drains, analysis and every server"),
    Endpoint("history", "GET", "/v1/history", "getHistory",
             "every switch, hold, lock and attestation, oldest first", query=(
                 Field("limit", "integer", "only the newest N events (still oldest first)",
                       minimum=1, maximum=HISTORY_LIMIT_MAX),
                 Field("since", "date-time", "only events recorded after this time; "
                                             "a time without a zone is UTC; encode + as %2B"),
             )),
    Endpoint("openapi", "GET", "/v1/openapi.json", "getOpenapi", "this document"),
    Endpoint("flip", "POST", "/v1/flip", "postFlip",
             "switch all traffic to `to` (default: the other environment)", body=(
                 Field("to", "string", "the environment to make live; default: the one not live",
                       nullable=True),
                 _REASON, _FORCE, _IF_GENERATION, _WAIT)),
    Endpoint("rollback", "POST", "/v1/rollback", "postRollback",
             "flip back to the previous environment", body=(_REASON, _FORCE, _IF_GENERATION)),
    Endpoint("hold", "POST", "/v1/hold", "postHold",
             "new requests wait until resume or the timeout", body=(
                 Field("timeout", "number", "seconds until the hold resumes by itself; "
                                            "default: the config's hold.max_wait",
                       nullable=True, minimum=0, exclusive_minimum=True, maximum=86400, unit="seconds"),
                 _REASON)),
    Endpoint("resume", "POST", "/v1/resume", "postResume", "release the held requests", body=(_REASON,)),
    Endpoint("lock", "POST", "/v1/lock", "postLock",
             "refuse flip, rollback, canary and promote until unlock", body=(_REASON,)),
    Endpoint("unlock", "POST", "/v1/unlock", "postUnlock", "allow switching again", body=(_REASON,)),
    Endpoint("reload", "POST", "/v1/reload", "postReload",
             "read the config file again and apply what changed (400 config_invalid, 409 "
             "restart_required: nothing changed); answers once every worker applied it", body=(_REASON,)),
    Endpoint("canary", "POST", "/v1/canary", "postCanary",
             "send `weight` percent of new requests to the idle environment", body=(
                 Field("weight", "integer", "percent of new requests for the idle environment; 0 ends it",
                       required=True, minimum=0, maximum=100),
                 _REASON, _FORCE)),
    Endpoint("promote", "POST", "/v1/promote", "postPromote",
             "flip to the canary environment", body=(_REASON, _FORCE, _WAIT)),
    Endpoint("abort", "POST", "/v1/abort", "postAbort", "canary weight back to 0", body=(_REASON,)),
    Endpoint("attest", "POST", "/v1/schema/attest", "postSchemaAttest",
             "record that migrating from_version to to_version is schema-compatible", body=(
                 Field("from_version", "string", "the version serving now", required=True, non_empty=True),
                 Field("to_version", "string", "the version to switch to", required=True, non_empty=True),
                 Field("by", "string", "who attests (a person, a CI job)", nullable=True))),
    Endpoint("servers", "PUT", "/v1/environments/{env}/servers", "putEnvironmentServers",
             "replace the environment's servers at runtime (a registration, kept until DELETE or until "
             "the config's list for it changes); the route generation does not move", body=(
                 Field("servers", "servers", 'the new list, in order: "host:port" or {"address", "weight"}; '
                                             "the same rules as the config's environments.X.servers",
                       required=True),
                 _REASON)),
    Endpoint("servers_reset", "DELETE", "/v1/environments/{env}/servers", "deleteEnvironmentServers",
             "drop the registration: the environment serves the config's list again", body=(_REASON,)),
    Endpoint("metrics", "GET", "/metrics", "getMetrics", "Prometheus metrics", auth=False),
    Endpoint("healthz", "GET", "/healthz", "getHealthz",
             "liveness: the process is up (and whether the live environment is healthy)", auth=False),
    Endpoint("readyz", "GET", "/readyz", "getReadyz",
             "readiness for an outer load balancer: 503 when the live environment has no healthy "
             "server or while shutting down", auth=False),
)

ENDPOINTS: dict[str, Endpoint] = {endpoint.name: endpoint for endpoint in _TABLE}


def check_body(endpoint: Endpoint, data: dict) -> dict:
    """check_body: api.body_of calls it with a POST's JSON object; every key checked against the table.

    Answers the object unchanged; an unknown key, a missing required one or a value of
    the wrong type or range is a ControlError 400 naming the key.
    """
    accepted = {f.name: f for f in endpoint.body}
    for key in data:
        if key not in accepted:
            names = ", ".join(sorted(accepted)) or "none (send an empty body)"
            raise ControlError("bad_request", f"unknown field {key!r} for {endpoint.name}; "
                                              f"accepted: {names}")
    for f in endpoint.body:
        if f.name in data:
            f.check(data[f.name])
        elif f.required:
            raise ControlError("bad_request", f'"{f.name}" is required ({f.expectation()})')
    return data


def check_query(endpoint: Endpoint, query: MultiMapping[str]) -> dict[str, Any]:
    """check_query: the parsed query parameters of a GET (``request.query``, a multidict).

    Answers {name: value} for the parameters given; an unknown or repeated parameter or
    a bad value is a ControlError 400 naming the parameter.
    """
    accepted = {f.name: f for f in endpoint.query}
    out: dict[str, Any] = {}
    for key in query.keys():
        f = accepted.get(key)
        if f is None:
            names = ", ".join(sorted(accepted)) or "none"
            raise ControlError("bad_request", f'unknown query parameter "{key}" for {endpoint.name}; '
                                              f"accepted: {names}")
        if len(query.getall(key)) > 1:
            raise ControlError("bad_request", f'query parameter "{key}" is given more than once')
        out[key] = f.parse(query[key])
    for f in endpoint.query:
        if f.required and f.name not in out:
            raise ControlError("bad_request", f'query parameter "{f.name}" is required')
    return out


def _iso_time(text: str) -> datetime | None:
    """_iso_time: an ISO-8601 date or time as an aware UTC datetime (no zone: UTC), or None."""
    text = _OFFSET_SPACE.sub(r"+\1", text.strip())
    if not text[:4].isdigit() or not text[4:5] == "-":
        return None        # fromisoformat also reads "20240501"; a time here starts YYYY-
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc)


def _plain(number: float) -> float | int:
    """_plain: 100.0 as 100, for messages and schemas."""
    return int(number) if float(number).is_integer() else number


def _show(value: Any) -> str:
    """_show: a bad value as an error message shows it: JSON, cut short."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
