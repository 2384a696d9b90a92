"""The OpenAPI 3.1 document of the admin API, served at /v1/openapi.json (SPEC §7).

``openapi_document`` builds it once from two sources: the request table (requests.py:
paths, operationIds, summaries, body schemas and query parameters, the same table the
API validates requests with) and the answer schemas below (what each endpoint answers,
status by status). tests/e2e/test_openapi_document.py drives every route into each answer
documented here and validates the bodies against these schemas; Status, HistoryEvent
and Error refuse properties they do not list, so a new field must be documented first.
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata
import tomllib
from pathlib import Path
from typing import Any

from .idempotency import HEADER as IDEMPOTENCY_KEY
from .idempotency import MAX_KEY_LENGTH, REPLAYED, WINDOW
from .jsonbody import MAX_BODY_BYTES, MAX_DEPTH
from .requests import ENDPOINTS, Endpoint

JSON = "application/json"
_PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties: dict, required: list[str] | None = None, closed: bool = True,
            description: str | None = None) -> dict:
    """_object: a JSON object schema; ``closed`` refuses properties it does not list."""
    out: dict[str, Any] = {"type": "object", "properties": properties}
    if required is not None:
        out["required"] = required
    if closed:
        out["additionalProperties"] = False
    if description:
        out["description"] = description
    return out


_COUNT = {"type": "integer", "minimum": 0}
_NAME = {"type": "string", "description": "an environment name"}
_TIME = {"type": "string", "format": "date-time", "description": "ISO-8601 UTC, milliseconds"}

_ERROR_CODES = [
    "bad_request", "unauthorized", "forbidden", "cross_origin", "forbidden_host", "unknown_environment",
    "not_found", "method_not_allowed", "payload_too_large", "unsupported_media_type", "idempotency_key_reused",
    "locked", "gate_failed", "no_previous", "no_canary", "conflict", "generation_mismatch",
    "state_unavailable", "store_unavailable", "idempotency_busy", "http_error", "internal",
    "config_invalid", "restart_required",
]

_SCHEMAS: dict[str, dict] = {
    "Error": _object({
        "error": {"type": "string", "description": "what went wrong, for a person"},
        "code": {"type": "string", "enum": _ERROR_CODES, "description": "stable, for a program"},
        "gates": {"type": "array", "items": _ref("GateResult"), "description": "gate_failed: every gate's result"},
        "generation": {"type": "integer", "minimum": 1,
                       "description": "generation_mismatch, conflict: the current generation"},
        "errors": {"type": "array", "items": {"type": "object", "properties": {
            "key": {"type": ["string", "null"], "description": "the key path (timeouts.connect)"},
            "line": {"type": ["integer", "null"], "description": "the file's line, when known"},
            "message": {"type": "string"}}, "required": ["key", "line", "message"]},
                   "description": "config_invalid: what is wrong with the file, by key"},
        "keys": {"type": "array", "items": {"type": "string"},
                 "description": "restart_required: the keys that only a restart applies"},
    }, required=["error", "code"]),
    "GateResult": _object({
        "gate": {"type": "string", "description": "health, drift, schema, smoke or warmup"},
        "passed": {"type": "boolean"},
        "reason": {"type": "string"},
    }, required=["gate", "passed", "reason"]),
    "Server": _object({
        "address": {"type": "string", "description": "host:port"},
        "healthy": {"type": "boolean"},
        "inflight": _COUNT,
        "connections": _COUNT,
    }, required=["address", "healthy", "inflight", "connections"]),
    "Environment": _object({
        "healthy": {"type": "boolean", "description": "at least one server healthy"},
        "inflight": _COUNT,
        "connections": _COUNT,
        "servers_source": {"type": "string", "enum": ["config", "registered"],
                           "description": "where the server list comes from: the config, or a registration "
                                          "(PUT /v1/environments/{env}/servers)"},
        "servers": {"type": "array", "items": _ref("Server"), "description": "the current list"},
        "retired_servers": {"type": "array", "items": _ref("Server"),
                            "description": "servers a new list removed that have not finished: serving while "
                                           "no server of the new list is healthy, then draining"},
    }, required=["healthy", "inflight", "connections", "servers_source", "servers", "retired_servers"]),
    "Drain": _object({
        "environment": _NAME,
        "generation": {"type": "integer", "minimum": 1, "description": "the switch that started it"},
        "inflight_at_start": _COUNT,
        "drained": {**_COUNT, "description": "requests that finished"},
        "forced_closed": {**_COUNT, "description": "requests closed at drain_timeout"},
        "dropped": {**_COUNT, "description": "requests lost by the switch (always 0 unless a fault)"},
        "client_gone": {**_COUNT, "description": "requests whose client left first"},
        "remaining": _COUNT,
        "interrupted": {"type": "boolean", "description": "a newer switch made this environment serve again"},
        "duration": {"type": ["number", "null"], "description": "seconds; null while running"},
        "idle_connections_closed": _COUNT,
        "servers": {"type": "array", "items": {"type": "string"},
                    "description": "a drain of the servers a new list removed: their addresses"},
        "replicas": {"type": "object", "additionalProperties": {"type": "object"},
                     "description": "fleet: each replica's own part, by replica id (the fields above are their sum)"},
    }, required=["environment", "generation", "inflight_at_start", "drained", "forced_closed", "dropped",
                 "client_gone", "remaining", "interrupted", "duration", "idle_connections_closed"],
        description="a drain of the environment that stopped receiving traffic, or of the servers a "
                    "new server list removed"),
    "Analysis": _object({
        "generation": {"type": "integer", "minimum": 1, "description": "the switch watched"},
        "environment": _NAME,
        "state": {"type": "string", "enum": ["running", "passed", "rolled_back", "cancelled", "failed"]},
        "reason": {"type": ["string", "null"], "description": "why it rolled back, was cancelled or failed"},
        "window": {"type": "number", "description": "seconds watched"},
        "probes": _COUNT,
        "failed_probes": _COUNT,
        "requests": {**_COUNT, "description": "live requests in the window (probes not counted)"},
        "errors": {**_COUNT, "description": "their 5xx answers"},
        "rollback_ms": {"type": "number", "description": "first failure to rollback applied"},
    }, required=["generation", "environment", "state", "reason", "window", "probes", "failed_probes",
                 "requests", "errors"], description="the post-flip analysis of the last flip or promote"),
    "Attestation": _object({
        "from_version": {"type": "string"},
        "to_version": {"type": "string"},
        "by": {"type": ["string", "null"]},
        "at": _TIME,
    }, required=["from_version", "to_version", "by", "at"]),
    "Change": _object({
        "action": {"type": "string", "enum": ["flip", "rollback", "auto_rollback", "promote", "canary", "abort"]},
        "from": {**_NAME, "description": "live before"},
        "to": {**_NAME, "description": "live after, or the canary environment"},
        "generation": {"type": "integer", "minimum": 1, "description": "the generation it made"},
    }, required=["action", "from", "to", "generation"], description="what one route change did"),
    "Worker": _object({
        "pid": {"type": ["integer", "null"], "description": "its process id (null before it started)"},
        "generation": {"type": "integer", "minimum": 0, "description": "the route generation it applied"},
        "inflight": _COUNT,
        "connections": {**_COUNT, "description": "open client connections"},
        "started": {"type": ["string", "null"], "format": "date-time"},
        "restarts": {**_COUNT, "description": "times this slot's process exited and was started again"},
        "alive": {"type": "boolean", "description": "serving traffic now"},
        "requests": {**_COUNT, "description": "requests it finished since it started"},
        "error": {"type": ["string", "null"],
                  "description": "why the slot has no process and none is started (the installed cutover "
                                 "changed since the supervisor started), else null"},
    }, required=["pid", "generation", "inflight", "connections", "started", "restarts", "alive", "requests"],
        description="one data-plane process (workers: 1 lists the one process)"),
    "Ack": _object({
        "complete": {"type": "boolean", "description": "every live worker applied the change"},
        "acked": {"type": "array", "items": {"type": "integer"}, "description": "the workers (pids) that applied it"},
        "pending": {"type": "array", "items": {"type": "integer"},
                    "description": "the workers that had not within fleet.ack_timeout"},
    }, required=["complete", "acked", "pending"], description="who applied the change this call made (SPEC §9.1)"),
    "Status": _object({
        "live": _NAME,
        "previous": {"type": ["string", "null"], "description": "where rollback goes; null before the first switch"},
        "generation": {"type": "integer", "minimum": 1, "description": "+1 on every change of the route"},
        "held": {"type": "boolean"},
        "held_requests": _COUNT,
        "fenced_requests": {**_COUNT, "description": "requests waiting until a fleet replica's lease is "
                                                     "confirmed (fencing, SPEC §9.2); 0 outside a fleet"},
        "hold_until": {"type": ["string", "null"], "format": "date-time",
                       "description": "when the hold resumes by itself; null when not held"},
        "locked": {"type": "boolean"},
        "lock_reason": {"type": ["string", "null"]},
        "weights": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0, "maximum": 100},
                    "description": "percent of new requests per environment"},
        "environments": {"type": "object", "additionalProperties": _ref("Environment")},
        "draining": {"type": "object", "additionalProperties": _ref("Drain"),
                     "description": "the drains running now, by environment"},
        "analysis": {"oneOf": [_ref("Analysis"), {"type": "null"}]},
        "listen": {"type": "string", "description": "host:port of the user traffic listener"},
        "preview_listen": {"type": ["string", "null"], "description": "host:port of the preview listener"},
        "listen_tls": {"type": "boolean", "description": "the user traffic listener speaks TLS (the tls section)"},
        "preview_listen_tls": {"type": ["boolean", "null"],
                               "description": "the preview listener speaks TLS; null without a preview listener"},
        "admin_tls": {"type": "boolean", "description": "the admin API's listener speaks TLS (admin.tls)"},
        "store": {"type": "object", "properties": {
            "kind": {"type": "string", "enum": ["file", "etcd"]},
            "path": {"type": "string", "description": "file: the state file"},
            "connected": {"type": "boolean", "description": "etcd: it answers (false: failing static)"},
            "since": {"type": ["string", "null"], "format": "date-time", "description": "etcd: since when"},
            "revision": {"type": ["integer", "null"], "description": "etcd: the newest revision seen"},
            "endpoints": {"type": "array", "items": {"type": "string"}},
            "prefix": {"type": "string"}}, "required": ["kind"], "description": "where the state lives"},
        "fleet": {"oneOf": [{"type": "null"}, {"type": "object", "properties": {
            "replica_id": {"type": "string"},
            "replicas": {"type": "array", "items": {"type": "object", "properties": {
                "id": {"type": "string"}, "address": {"type": "string"},
                "generation": {"type": "integer", "minimum": 0}, "alive": {"type": "boolean"}}}}},
            "required": ["replica_id", "replicas"]}], "description": "fleet mode: this replica and the live ones"},
        "pid": {"type": "integer", "description": "the process id of cutover serve (its supervisor with workers "
                                                 "> 1): SIGTERM drains it, SIGUSR2 upgrades it"},
        "workers": {"type": "array", "items": _ref("Worker"), "description": "the processes serving traffic"},
        "ack": {**_ref("Ack"), "description": "a mutation that changed the data plane: who applied it"},
        "changed": {"type": "boolean", "description": "mutations only: whether the call changed anything"},
        "change": {**_ref("Change"), "description": "a mutation that changed the route: that change, "
                                                     "even when the status has moved on since (wait: true)"},
        "released": {**_COUNT, "description": "resume only: the held requests released"},
        "reloaded": {"type": "array", "items": {"type": "string"},
                     "description": "reload only: the config keys that changed and were applied"},
        "attestations": {"type": "array", "items": _ref("Attestation"),
                         "description": "schema/attest only: every attestation kept"},
    }, required=["live", "previous", "generation", "held", "held_requests", "hold_until", "locked",
                 "lock_reason", "weights", "environments", "draining", "analysis", "listen",
                 "preview_listen", "listen_tls", "preview_listen_tls", "admin_tls", "store", "fleet", "pid", "workers"]),
    "HistoryEvent": _object({
        "at": _TIME,
        "action": {"type": "string", "enum": ["flip", "rollback", "auto_rollback", "promote", "canary", "abort",
                                              "hold", "resume", "lock", "unlock", "attest", "servers",
                                              "servers_reset", "analysis_cancelled", "reload"]},
        "from": {**_NAME, "description": "live before"},
        "to": {**_NAME, "description": "live after, or the canary environment"},
        "generation": {"type": "integer", "minimum": 1, "description": "the generation after it"},
        "reason": {"type": ["string", "null"]},
        "forced": {"type": "boolean", "description": "switches: the gates were skipped"},
        "gates": {"type": "array", "items": _ref("GateResult"), "description": "switches: the gates that ran"},
        "recovery_ms": {"type": "number", "description": "rollbacks: call to the route swapped"},
        "drain": _ref("Drain"),
        "drained": {**_COUNT, "description": "switches, once the drain ended"},
        "forced_closed": {**_COUNT, "description": "switches, once the drain ended"},
        "dropped": {**_COUNT, "description": "switches, once the drain ended"},
        "timeout": {"type": "number", "description": "hold: seconds"},
        "released": {**_COUNT, "description": "resume: the held requests released"},
        "weight": {"type": "integer", "minimum": 0, "maximum": 100, "description": "canary, abort: the new weight"},
        "by": {"type": ["string", "null"], "description": "attest: who attested"},
        "environment": {**_NAME, "description": "servers, servers_reset: the environment whose list changed"},
        "servers": {"type": "array", "items": {"type": "string"},
                    "description": "servers, servers_reset: its list after the change"},
        "added": {"type": "array", "items": {"type": "string"}, "description": "servers: addresses added"},
        "removed": {"type": "array", "items": {"type": "string"},
                    "description": "servers: addresses removed (drained; the drain's outcome is added)"},
        "reloaded": {"type": "array", "items": {"type": "string"},
                     "description": "reload: the config keys that changed (a removed server's drain is added)"},
        "config": {"type": "string", "description": "reload: the config file read"},
        "actor": {"type": "string", "enum": ["admin", "read", "none", "cutover"],
                  "description": "which token asked: admin, read, none (auth off), or cutover itself "
                                 "(a hold's timeout, an analysis' rollback)"},
        "client": {"type": ["string", "null"], "description": "the client's address; null for cutover itself"},
    }, required=["at", "action", "from", "to", "generation", "reason"]),
    "History": _object({"events": {"type": "array", "items": _ref("HistoryEvent"),
                                   "description": "oldest first"}}, required=["events"]),
    "Health": _object({
        "ok": {"type": "boolean", "const": True},
        "live": _NAME,
        "live_healthy": {"type": "boolean"},
    }, required=["ok", "live", "live_healthy"]),
    "Readiness": _object({
        "ready": {"type": "boolean"},
        "reasons": {"type": "array", "items": {"type": "string"}, "description": "why not ready; empty when ready"},
        "live": _NAME,
        "live_healthy": {"type": "boolean"},
        "shutting_down": {"type": "boolean"},
    }, required=["ready", "reasons", "live", "live_healthy", "shutting_down"]),
}


def _error(description: str, *codes: str) -> dict:
    """_error: a response carrying Error, its code one of ``codes``."""
    schema = {"allOf": [_ref("Error"), {"properties": {"code": {"enum": list(codes)}}}]}
    return {"description": description, "content": {JSON: {"schema": schema}}}


_RESPONSES = {
    "Unauthorized": {**_error("missing or wrong bearer token", "unauthorized"),
                     "headers": {"WWW-Authenticate": {"description": 'Bearer realm="cutover"', "required": True,
                                                      "schema": {"type": "string", "pattern": "^Bearer "}}}},
    "NotFound": _error("any path that is no endpoint", "not_found"),
    "MethodNotAllowed": _error("an endpoint called with a method it does not take", "method_not_allowed"),
    "Internal": _error("any endpoint, on a bug (details in the log)", "internal"),
    "Forbidden": _error("the read token may only read (forbidden), or a web page of another site sent "
                        "the mutation (cross_origin: Origin or Sec-Fetch-Site; forbidden_host: Host)",
                        "forbidden", "cross_origin", "forbidden_host"),
    "TooLarge": _error(f"the body is larger than {MAX_BODY_BYTES} bytes", "payload_too_large"),
    "UnsupportedMediaType": _error("a body that is not Content-Type application/json, or is compressed",
                                   "unsupported_media_type"),
    "IdempotencyKeyReused": _error(f"this {IDEMPOTENCY_KEY} came with another body in the last "
                                   f"{WINDOW:g} seconds", "idempotency_key_reused"),
    "StateUnavailable": _error(f"the state could not be saved, nothing changed (state_unavailable; "
                               f"store_unavailable: the fleet's etcd did not answer); or too many calls with "
                               f"an {IDEMPOTENCY_KEY} are running (idempotency_busy)",
                               "state_unavailable", "store_unavailable", "idempotency_busy"),
}

_PARAMETERS = {
    "IdempotencyKey": {
        "name": IDEMPOTENCY_KEY, "in": "header", "required": False,
        "description": f"makes a retry safe: a repeat with the same key and body within {WINDOW:g} seconds "
                       "applies nothing and gets the first answer again (marked "
                       f"{REPLAYED}: true); a bad key is 400, the same key with another body 422",
        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH + 2,
                   "pattern": '^"?[!#-\\[\\]-~]+"?$'},
    },
}

_STATUS_ANSWER = "the status after the call"
_OK: dict[str, tuple[str, str, dict]] = {       # endpoint -> (description, media type, schema)
    "status": ("the live route and every server", JSON, _ref("Status")),
    "history": ("the events asked for, oldest first", JSON, _ref("History")),
    "openapi": ("this document", JSON, {"type": "object", "required": ["openapi", "info", "paths"]}),
    "metrics": ("the Prometheus text exposition format 0.0.4", "text/plain", {"type": "string"}),
    "healthz": ("the process is up", JSON, _ref("Health")),
    "readyz": ("ready for traffic", JSON, _ref("Readiness")),
}

# Refusals of the request itself (400 for its body or query comes from the table).
_REFUSALS: dict[str, dict[int, dict]] = {
    "flip": {400: _error("a bad body, or `to` names no environment", "bad_request", "unknown_environment"),
             409: _error("refused: switching is locked, a gate failed, or the route changed while "
                         "the gates ran", "locked", "gate_failed", "conflict"),
             412: _error("if_generation does not match the current generation", "generation_mismatch")},
    "readyz": {503: {"description": "not ready: the reasons say why",
                     "content": {JSON: {"schema": _ref("Readiness")}}}},
    "rollback": {409: _error("refused: locked, no previous environment, or its health gate failed",
                             "locked", "no_previous", "gate_failed"),
                 412: _error("if_generation does not match the current generation", "generation_mismatch")},
    "canary": {409: _error("refused: locked, or the idle environment's health gate failed",
                           "locked", "gate_failed")},
    "promote": {409: _error("refused: locked, no canary running, a gate failed, or the route changed "
                            "while the gates ran", "locked", "no_canary", "gate_failed", "conflict")},
    "servers": {400: _error("a bad body, a server the config's rules refuse (the message names it: "
                            "servers[1]: expected \"host:port\"), or a server of the other environment",
                            "bad_request"),
                404: _error("no environment of that name", "not_found"),
                409: _error("refused: switching is locked and the environment receives traffic", "locked")},
    "reload": {400: _error("a bad body, or the config file does not validate (config_invalid: nothing "
                           "changed; errors names the key)", "bad_request", "config_invalid"),
               409: _error("the file changes keys only a restart applies (listen, preview_listen, "
                           "admin.listen, workers, worker_nice (workers > 1), store, state_file, "
                           "history_limit, fleet.replica_id, the environments' names, tls or admin.tls "
                           "turned on or off): nothing changed; keys names them", "restart_required")},
    "servers_reset": {404: _error("no environment of that name", "not_found"),
                      409: _error("refused: switching is locked and the environment receives traffic",
                                  "locked")},
}


# The mutations that change the data plane, whose answer carries an Ack (and may be a 202).
ACKED = ("flip", "rollback", "hold", "resume", "canary", "promote", "abort", "servers", "servers_reset",
         "reload")


def _responses(endpoint: Endpoint) -> dict:
    """_responses: every answer of one endpoint, by status."""
    description, media, schema = _OK.get(endpoint.name, (_STATUS_ANSWER, JSON, _ref("Status")))
    out: dict[str, dict] = {"200": {"description": description, "content": {media: {"schema": schema}}}}
    mutation = endpoint.method != "GET"
    if mutation:
        out["200"]["headers"] = {REPLAYED: {"description": f"true on the replayed answer to a repeated "
                                                           f"{IDEMPOTENCY_KEY}", "schema": {"const": "true"}}}
    if endpoint.name in ACKED:
        out["202"] = {"description": "the change is committed, but not every worker applied it within "
                                     "fleet.ack_timeout: ack.pending names them",
                      "content": {JSON: {"schema": _ref("Status")}}}
    refusals = _REFUSALS.get(endpoint.name, {})
    if endpoint.body or endpoint.query or 400 in refusals:
        what = (f"a bad body (not JSON, not an object, nested over {MAX_DEPTH} deep, or a field the "
                f"request table refuses) or a bad {IDEMPOTENCY_KEY}" if mutation else "a bad query parameter")
        out["400"] = refusals.get(400) or _error(f"{what}; the message names it", "bad_request")
    if endpoint.auth:
        out["401"] = {"$ref": "#/components/responses/Unauthorized"}
    out.update({str(code): answer for code, answer in refusals.items() if code != 400})
    if mutation:
        for code, name in ((403, "Forbidden"), (413, "TooLarge"), (415, "UnsupportedMediaType"),
                           (422, "IdempotencyKeyReused"), (503, "StateUnavailable")):
            out[str(code)] = {"$ref": f"#/components/responses/{name}"}
    return dict(sorted(out.items()))


def _operation(endpoint: Endpoint) -> dict:
    """_operation: one endpoint as an OpenAPI operation object."""
    op: dict[str, Any] = {"operationId": endpoint.operation_id, "summary": endpoint.summary}
    if not endpoint.auth:
        op["security"] = []
    if endpoint.query:
        op["parameters"] = [{"name": f.name, "in": "query", "required": f.required,
                             "description": f.description, "schema": f.schema()} for f in endpoint.query]
    if endpoint.method != "GET":
        op["parameters"] = [{"$ref": "#/components/parameters/IdempotencyKey"}]
        if "{env}" in endpoint.path:
            op["parameters"].append({"name": "env", "in": "path", "required": True, "schema": {"type": "string"},
                                     "description": "the environment (a name of the config's environments)"})
        schema = _object({f.name: f.schema() for f in endpoint.body},
                         required=[f.name for f in endpoint.body if f.required] or None)
        op["requestBody"] = {"required": False, "description": "an empty body is {}",
                             "content": {JSON: {"schema": schema}}}
    op["responses"] = _responses(endpoint)
    return op


def package_version() -> str:
    """package_version: the installed cutover's version, else the one pyproject.toml gives."""
    try:
        return importlib.metadata.version("cutover")
    except importlib.metadata.PackageNotFoundError:
        try:
            return tomllib.loads(_PYPROJECT.read_text(encoding="utf-8"))["project"]["version"]
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "0+unknown"


@functools.cache
def _document() -> dict:
    paths: dict[str, dict] = {}
    for endpoint in ENDPOINTS.values():
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = _operation(endpoint)
    return {
        "openapi": "3.1.0",
        "info": {"title": "cutover admin API", "version": package_version(),
                 "description": "Blue-green switching: flip, rollback, hold, lock, canary and promote. "
                                "POST bodies may be empty ({}); every mutation answers with the new status. "
                                "Errors are {\"error\", \"code\"} with a stable code."},
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "admin.token for everything; admin.read_token "
                                                          "for GETs only (a mutation with it is 403)"}},
            "schemas": _SCHEMAS,
            "responses": _RESPONSES,
            "parameters": _PARAMETERS,
        },
    }


def openapi_document() -> dict:
    """openapi_document: the GET /v1/openapi.json handler's answer; a fresh copy each call."""
    return copy.deepcopy(_document())
