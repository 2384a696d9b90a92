"""The OpenAPI 3.1 document of the admin API, served at /v1/openapi.json."""

from __future__ import annotations

import copy

_ERROR = {"$ref": "#/components/schemas/Error"}
_STATUS = {"$ref": "#/components/schemas/Status"}


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _responses(*codes: int) -> dict:
    out = {"200": {"description": "the new status", "content": _json(_STATUS)},
           "401": {"description": "missing or wrong bearer token", "content": _json(_ERROR)}}
    text = {400: "bad body or unknown environment", 409: "refused: locked, gate_failed, no_previous or no_canary",
            412: "if_generation does not match", 503: "the state could not be saved; nothing changed"}
    for code in codes:
        out[str(code)] = {"description": text[code], "content": _json(_ERROR)}
    return out


def _post(summary: str, properties: dict, *codes: int, required: list[str] | None = None) -> dict:
    schema = {"type": "object", "additionalProperties": False, "properties": properties}
    if required:
        schema["required"] = required
    return {"post": {"summary": summary, "requestBody": {"required": False, "content": _json(schema)},
                     "responses": _responses(400, 503, *codes)}}


_REASON = {"reason": {"type": "string"}}
_FORCE = {"force": {"type": "boolean", "description": "skip the gates (never a lock)"}}
_IF_GEN = {"if_generation": {"type": "integer", "description": "compare-and-swap on the generation"}}
_WAIT = {"wait": {"type": "boolean", "description": "answer only when the post-flip analysis ended; "
                                                    "the answer's analysis.state says passed or rolled_back"}}

_DOCUMENT = {
    "openapi": "3.1.0",
    "info": {"title": "cutover admin API", "version": "1",
             "description": "Blue-green switching: flip, rollback, hold, lock and canary. "
                            "POST bodies may be empty; every mutation answers with the new status."},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {"type": "object", "required": ["error", "code"], "properties": {
                "error": {"type": "string"},
                "code": {"type": "string", "enum": [
                    "unauthorized", "bad_request", "unknown_environment", "locked", "gate_failed",
                    "no_previous", "no_canary", "generation_mismatch", "state_unavailable", "superseded", "conflict",
                    "not_found", "method_not_allowed"]},
                "gates": {"type": "array", "items": {"type": "object"}},
                "generation": {"type": "integer"}}},
            "Server": {"type": "object", "properties": {
                "address": {"type": "string"}, "healthy": {"type": "boolean"},
                "inflight": {"type": "integer"}, "connections": {"type": "integer"}}},
            "Environment": {"type": "object", "properties": {
                "healthy": {"type": "boolean"}, "inflight": {"type": "integer"},
                "connections": {"type": "integer"},
                "servers": {"type": "array", "items": {"$ref": "#/components/schemas/Server"}}}},
            "Status": {"type": "object", "required": ["live", "previous", "generation", "held", "held_requests",
                                                      "locked", "weights", "environments"], "properties": {
                "live": {"type": "string"}, "previous": {"type": ["string", "null"]},
                "generation": {"type": "integer", "minimum": 1}, "held": {"type": "boolean"},
                "held_requests": {"type": "integer"}, "locked": {"type": "boolean"},
                "weights": {"type": "object", "additionalProperties": {"type": "integer"}},
                "environments": {"type": "object",
                                 "additionalProperties": {"$ref": "#/components/schemas/Environment"}},
                "changed": {"type": "boolean", "description": "on mutations: whether anything changed"}}},
        },
    },
    "security": [{"bearer": []}],
    "paths": {
        "/v1/status": {"get": {"summary": "the live route, hold, lock, weights and every server",
                               "responses": {"200": {"description": "status", "content": _json(_STATUS)}}}},
        "/v1/history": {"get": {"summary": "every switch, hold and lock, oldest first", "responses": {
            "200": {"description": "events", "content": _json({"type": "object", "properties": {
                "events": {"type": "array", "items": {"type": "object", "required": ["at", "action"]}}}})}}}},
        "/v1/flip": _post("switch all traffic to `to` (default: the other environment)",
                          {"to": {"type": "string"}, **_REASON, **_FORCE, **_IF_GEN, **_WAIT}, 409, 412),
        "/v1/rollback": _post("flip back to the previous environment", {**_REASON, **_FORCE, **_IF_GEN}, 409, 412),
        "/v1/hold": _post("new requests wait until resume or the timeout",
                          {"timeout": {"type": "number", "exclusiveMinimum": 0}, **_REASON}),
        "/v1/resume": _post("release held requests", dict(_REASON)),
        "/v1/lock": _post("refuse flip, rollback and canary until unlock", dict(_REASON)),
        "/v1/unlock": _post("allow switching again", dict(_REASON)),
        "/v1/canary": _post("send `weight` percent of new requests to the idle environment",
                            {"weight": {"type": "integer", "minimum": 0, "maximum": 100}, **_REASON, **_FORCE},
                            409, required=["weight"]),
        "/v1/promote": _post("flip to the canary environment", {**_REASON, **_FORCE, **_WAIT}, 409),
        "/v1/abort": _post("canary weight back to 0", dict(_REASON), 409),
        "/v1/schema/attest": _post("record that migrating from_version to to_version is schema-compatible",
                                   {"from_version": {"type": "string"}, "to_version": {"type": "string"},
                                    "by": {"type": "string"}}, required=["from_version", "to_version"]),
        "/v1/openapi.json": {"get": {"summary": "this document", "responses": {"200": {"description": "OpenAPI"}}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "security": [],
                             "responses": {"200": {"description": "text exposition"}}}},
        "/healthz": {"get": {"summary": "liveness of the router", "security": [],
                             "responses": {"200": {"description": "ok"}}}},
    },
}


def openapi_document() -> dict:
    """openapi_document: a fresh copy of the document."""
    return copy.deepcopy(_DOCUMENT)
