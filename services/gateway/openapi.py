"""The OpenAPI 3.1 document of the gateway, generated from its routes and the contract schemas.

Fields become JSON Schema through apispec's marshmallow plugin, with what the contracts check
beyond marshmallow's validators (`_ContractConverter`): a rule a validator checks in code states
itself (`contracts.fields.documented`: blank names, APT numbers, IANA time zones), `Text` states
that it takes no NUL, a list states its sort keys, a rule across fields states itself on its
`validates_schema` method (`if`/`then`), and an operation names the fields the domain also
checks against what is stored (`x-state-rules`), so that a request made to the document is not
refused for a rule it does not say. The routes, their parameters and their error responses are
the gateway's own (services/gateway/http.py) and are assembled here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from apispec.ext.marshmallow.openapi import OpenAPIConverter
from marshmallow import Schema, fields

from concierge import idempotency
from contracts.fields import ecma
from contracts.topology import FLOOR_MAX, FLOOR_MESSAGE, FLOOR_MIN, GROUND_FLOORS, Floor
from services.gateway.http import MAX_BODY_BYTES, WRITE_METHODS, Route

OPENAPI_VERSION = "3.1.0"
API_VERSION = "1.0.0"
SECURITY_SCHEME = "bearer"

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details. `errors` maps each bad field (or `body`) to its "
    "messages; nested fields nest the same way.",
    "required": ["type", "title", "status", "detail", "errors"],
    "properties": {
        "type": {"type": "string", "format": "uri-reference",
                 "examples": ["urn:concierge:problem:unprocessable-entity"]},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "errors": {"type": "object", "additionalProperties": True},
    },
}

BUILTIN_SCHEMAS: dict[str, dict[str, Any]] = {
    "Problem": PROBLEM_SCHEMA,
    "Resource": {"type": "object", "description": "The resource as the service returns it."},
    "Created": {
        "type": "object",
        "required": ["id"],
        "properties": {"id": {"type": "string"}},
    },
    "Page": {
        "type": "object",
        "required": ["items", "total", "page", "per_page"],
        "properties": {
            "items": {"type": "array", "items": {"type": "object"}},
            "total": {"type": "integer", "minimum": 0},
            "page": {"type": "integer", "minimum": 1},
            "per_page": {"type": "integer", "minimum": 1},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string", "enum": ["ok"]}},
    },
    "OpenApiDocument": {"type": "object", "description": "This document."},
}

ERROR_RESPONSES: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "The body is not a JSON object or ended before its length "
                        "(`errors.body` says why), or a query parameter is not UTF-8 text."),
    401: ("Unauthorized", "No valid bearer token (or wrong credentials at login)."),
    402: ("PaymentRequired", "A paid item that is not paid for (a fourth family member's "
                             "Additional App); `detail` says which."),
    403: ("Forbidden", "This role may never do this, or its permission in this community "
                       "does not allow it."),
    404: ("NotFound", "No such route or resource, or not one the caller may see."),
    408: ("RequestTimeout", "The body stopped arriving before its end."),
    409: ("Conflict", "Clashes with the current state: a duplicate or a concurrent change."),
    413: ("ContentTooLarge", f"The body is larger than {MAX_BODY_BYTES} bytes."),
    422: ("UnprocessableContent", "A field or query parameter broke a rule; see `errors`."),
    429: ("TooManyRequests", "Too many failed attempts from this client or at this account: "
                             "refused, unchecked, until the Retry-After seconds have passed."),
    500: ("InternalError", "Our fault; quote the X-Request-Id."),
    503: ("ServiceUnavailable", "A service behind the gateway is not running, or has as many "
                                "of these requests in hand as it takes; retry after the "
                                "Retry-After seconds."),
}

_PATH_PARAM = re.compile(r"<(?:(?P<converter>[a-z]+):)?(?P<name>[a-zA-Z_][a-zA-Z0-9_]*)>")
_CONVERTERS: dict[str, dict[str, Any]] = {
    "uuid": {"type": "string", "format": "uuid"},
    "int": {"type": "integer"},
    "string": {"type": "string"},
}


class _ContractConverter(OpenAPIConverter):
    """apispec's converter, stating what our contracts check beyond marshmallow's validators:
    a validator's or a `validates_schema` method's own rule (`contracts.fields.documented`),
    `Text`'s (no NUL), a route's `metadata={"json_schema": ...}` (the sort keys a list takes),
    the floors of `Floor`, and patterns in ECMA-262's dialect (`contracts.fields.ecma`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_attribute_function(_stated)

    def field2type_and_format(self, field: fields.Field, **kwargs: Any) -> dict[str, Any]:
        if isinstance(field, Floor):
            return floor_schema(allow_all=field.allow_all)
        return dict(super().field2type_and_format(field, **kwargs))

    def field2pattern(self, field: fields.Field, **kwargs: Any) -> dict[str, Any]:
        return {key: ecma(value) for key, value in super().field2pattern(field, **kwargs).items()}

    def schema2jsonschema(self, schema: Any) -> dict[str, Any]:
        result: dict[str, Any] = super().schema2jsonschema(schema)
        cls = schema if isinstance(schema, type) else type(schema)
        for rule in schema_rules(cls):  # rules across fields (`validates_schema`)
            result.setdefault("allOf", []).extend(rule.get("allOf", [rule]))
        summary = _first_line(cls.__doc__)
        if summary:
            result["description"] = summary
        return result


class _ContractPlugin(MarshmallowPlugin):
    Converter = _ContractConverter


def _stated(self: OpenAPIConverter, field: fields.Field, ret: dict[str, Any]) -> dict[str, Any]:
    """What a field states beyond apispec's reading of it (after it, nullability included)."""
    result: dict[str, Any] = {}
    for validator in field.validators:
        hint = getattr(validator, "json_schema", None)
        if hint:
            _merge(result, hint, ret)
    own = getattr(field, "json_schema", None)
    if own and not {"enum", "format"} & {*ret, *result}:
        pattern = result.get("pattern", ret.get("pattern"))
        if pattern is None:
            _merge(result, own, ret)
        elif pattern != own["pattern"]:  # one `pattern` per schema: the rest in allOf
            result["allOf"] = [*ret.get("allOf", []), {"pattern": own["pattern"]}]
    _merge(result, field.metadata.get("json_schema") or {}, ret)
    default = field.load_default
    if callable(default) and "default" not in ret and _is_json(default()):
        result["default"] = default()
    if isinstance(field, Floor) and field.allow_none:
        result["anyOf"] = [*ret["anyOf"], {"type": "null"}]
    return result


def _merge(result: dict[str, Any], hint: dict[str, Any], ret: dict[str, Any]) -> None:
    for key, value in hint.items():
        if key == "maxLength" and key in {*ret, *result}:
            result[key] = min(result.get(key, ret.get(key)), value)
        elif key == "description" and key in {*ret, *result}:
            result[key] = f"{result.get(key, ret.get(key))} {value}"
        else:
            result[key] = value


def schema_rules(schema: type[Schema]) -> list[dict[str, Any]]:
    """The JSON Schema of each rule across fields that the schema states beside its check
    (`contracts.fields.documented` on a `validates_schema` method)."""
    hooks = (getattr(schema, name, None) for name in dir(schema) if not name.startswith("__"))
    return [hook.json_schema for hook in hooks
            if callable(hook) and isinstance(getattr(hook, "json_schema", None), dict)]


def state_rules(schema: type[Schema] | None) -> dict[str, str]:
    """Fields the domain also checks against what is stored (a schema's `state_rules`): a
    request the document allows may still be refused with 422 naming one of them."""
    return dict(getattr(schema, "state_rules", None) or {})


def floor_schema(*, allow_all: bool) -> dict[str, Any]:
    names = [*GROUND_FLOORS, "all"] if allow_all else list(GROUND_FLOORS)
    return {
        "anyOf": [
            {"type": "integer", "minimum": FLOOR_MIN, "maximum": FLOOR_MAX},
            {"type": "string", "enum": names},
        ],
        "description": FLOOR_MESSAGE + (" Or 'all' (All Floors)." if allow_all else ""),
    }


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _first_line(text: str | None) -> str:
    return (text or "").strip().split("\n\n")[0].replace("\n", " ").strip()


class Components:
    """The document's components: marshmallow schemas through apispec, named after their
    class, and the gateway's own (`BUILTIN_SCHEMAS`) by name."""

    def __init__(self, spec: APISpec, converter: OpenAPIConverter) -> None:
        self.spec = spec
        self.converter = converter
        self._classes: dict[str, type[Schema]] = {}

    def ref(self, target: type[Schema] | str) -> dict[str, Any]:
        if isinstance(target, str):
            if target not in self._classes:
                self._classes[target] = Schema
                self.spec.components.schema(target, BUILTIN_SCHEMAS[target])
            return {"$ref": f"#/components/schemas/{target}"}
        known = self._classes.setdefault(target.__name__, target)
        if known is not target:
            raise ValueError(f"two schemas are both named {target.__name__}: {known}, {target}")
        return dict(self.converter.resolve_nested_schema(target))


def _schema_name(schema: Any) -> str:
    return (schema if isinstance(schema, type) else type(schema)).__name__


# --- the document ---------------------------------------------------------------------------


def openapi_path(path: str) -> tuple[str, list[dict[str, Any]]]:
    """werkzeug's `/x/<uuid:id>` as OpenAPI's `/x/{id}`, with its path parameters."""
    parameters = [
        {"name": m["name"], "in": "path", "required": True,
         "schema": dict(_CONVERTERS[m["converter"] or "string"])}
        for m in _PATH_PARAM.finditer(path)
    ]
    return _PATH_PARAM.sub(lambda m: "{" + m["name"] + "}", path), parameters


def query_parameters(schema: type[Schema] | None, components: Components) -> list[dict[str, Any]]:
    if schema is None:
        return []
    return [{key: parameter[key] for key in ("name", "in", "required", "schema")}
            for parameter in components.converter.schema2parameters(schema, location="query")]


def idempotency_parameters(route: Route) -> list[dict[str, Any]]:
    """Every write takes an Idempotency-Key (concierge.idempotency)."""
    if route.method not in WRITE_METHODS:
        return []
    return [{
        "name": idempotency.HEADER, "in": "header", "required": False,
        "schema": {"type": "string", "minLength": 1, "maxLength": idempotency.MAX_KEY_CHARS,
                   "pattern": "^[ -~]+$"},
        "description": "Makes the request safe to retry: the same key and request within 24 h "
                       "answer the first response again without doing anything twice; the "
                       "same key with another request is 422. Keys are per account.",
    }]


def error_statuses(route: Route) -> list[int]:
    """The error statuses a route can answer, from its shape (see services/gateway/http.py)."""
    statuses = {500, *route.errors}
    if route.body is not None:
        statuses |= {400, 408, 413, 422}
    if route.method in WRITE_METHODS:
        statuses.add(422)  # an Idempotency-Key reused for another request
    if route.query is not None:
        statuses |= {400, 422}
    if route.auth:
        statuses |= {401, 403}
    if "<" in route.path:
        statuses.add(404)
    if route.calls_rpc:
        statuses.add(503)
        if route.method in {"POST", "PATCH", "DELETE"}:
            statuses.add(409)  # every write may meet a concurrent one
    return sorted(statuses)


def operation(route: Route, components: Components) -> dict[str, Any]:
    _, path_parameters = openapi_path(route.path)
    success: dict[str, Any] = {"description": route.summary}
    if route.returns is not None and route.status != 204:
        success["content"] = {"application/json": {"schema": components.ref(route.returns)}}
    if route.location:
        success["headers"] = {"Location": {"schema": {"type": "string", "format": "uri-reference"},
                                           "description": "Where the new resource lives."}}
    responses: dict[str, Any] = {str(route.status): success}
    for status in error_statuses(route):
        responses[str(status)] = {"$ref": f"#/components/responses/{ERROR_RESPONSES[status][0]}"}
    result: dict[str, Any] = {
        "operationId": route.name,
        "summary": route.summary,
        "tags": [route.tag],
        "parameters": [*path_parameters, *query_parameters(route.query, components),
                       *idempotency_parameters(route)],
        "responses": responses,
        "security": [{SECURITY_SCHEME: []}] if route.auth else [],
    }
    description = " ".join(filter(None, [
        route.description, f"Only for: {', '.join(route.roles)}." if route.roles else ""]))
    rules = state_rules(route.body)
    if rules:
        stored = " ".join(f"`{name}` {why}" for name, why in rules.items())
        description = " ".join(filter(None, [
            description, f"Checked against what is stored too (422 naming the field): {stored}"]))
        result["x-state-rules"] = sorted(rules)
    if description:
        result["description"] = description
    if route.body is not None:
        result["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": components.ref(route.body)}},
        }
    return result


def document(routes: Iterable[Route]) -> dict[str, Any]:
    """The whole OpenAPI document for these routes."""
    plugin = _ContractPlugin(schema_name_resolver=_schema_name)
    spec = APISpec(title="SmartPlus Cloud (Concierge) gateway", version=API_VERSION,
                   openapi_version=OPENAPI_VERSION, plugins=[plugin])
    assert plugin.converter is not None
    components = Components(spec, plugin.converter)
    components.ref("Problem")
    paths: dict[str, dict[str, Any]] = {}
    tags: list[str] = []
    for route in routes:
        path, _ = openapi_path(route.path)
        paths.setdefault(path, {})[route.method.lower()] = operation(route, components)
        if route.tag not in tags:
            tags.append(route.tag)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "SmartPlus Cloud (Concierge) gateway",
            "version": API_VERSION,
            "description": "The web portal's HTTP API. Errors are application/problem+json; "
            "lists take page, per_page (default 10, at most 100), sort and q.",
        },
        "tags": [{"name": tag} for tag in tags],
        "paths": paths,
        "components": {
            "schemas": spec.to_dict()["components"]["schemas"],
            "responses": {
                name: {
                    "description": description,
                    "content": {"application/problem+json": {"schema": components.ref("Problem")}},
                }
                for name, description in ERROR_RESPONSES.values()
            },
            "securitySchemes": {
                SECURITY_SCHEME: {"type": "http", "scheme": "bearer",
                                  "description": "The token from POST /api/v1/auth/login."},
            },
        },
    }
