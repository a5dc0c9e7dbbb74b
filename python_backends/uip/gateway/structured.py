"""Structured output: OpenAI's `response_format` (chat) and `text.format` (responses) as the
`guided_decoding` input of the llm contract (uip.llm.guided), enforced token by token in
llm_engine. A schema that is not a valid JSON Schema is a 400 naming the problem (checked
with `jsonschema` here; what xgrammar cannot compile comes back from Triton as a 400 too).
"""

from __future__ import annotations

import json
from typing import Any

from uip.gateway.errors import ApiError


def check_schema(schema: Any, param: str) -> None:
    from jsonschema import SchemaError, validators

    if not isinstance(schema, dict):
        raise ApiError(400, "the JSON schema must be an object", param, "invalid_schema")
    try:
        validators.validator_for(schema).check_schema(schema)
    except SchemaError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise ApiError(400, f"invalid JSON schema at {where}: {e.message}", param,
                       "invalid_schema") from None


def guide_json(kind: str, schema: dict[str, Any] | None, param: str) -> str | None:
    """The guided_decoding text for a format type (`text` -> None)."""
    if kind == "text":
        return None
    if kind == "json_object":
        return json.dumps({"type": "json_object"})
    if schema is None:
        raise ApiError(400, "json_schema needs a schema", param, "missing_schema")
    check_schema(schema, param)
    return json.dumps({"type": "json_schema", "schema": schema})


def chat_guide(response_format) -> str | None:
    """`response_format` of chat completions ({"type": "json_schema", "json_schema":
    {"name", "schema", "strict"}})."""
    if response_format is None:
        return None
    js = response_format.json_schema
    if response_format.type == "json_schema" and js is None:
        raise ApiError(400, "response_format json_schema needs 'json_schema'",
                       "response_format.json_schema", "missing_schema")
    return guide_json(response_format.type, js.schema_ if js else None,
                      "response_format.json_schema.schema")


def responses_guide(text) -> str | None:
    """`text.format` of the Responses API ({"type": "json_schema", "name", "schema"})."""
    if text is None or text.format is None:
        return None
    fmt = text.format
    return guide_json(fmt.type, fmt.schema_, "text.format.schema")


def format_echo(text) -> dict[str, Any]:
    """The `text` field a response object reports."""
    if text is None or text.format is None:
        return {"format": {"type": "text"}}
    return {"format": text.format.model_dump(by_alias=True, exclude_none=True)}
