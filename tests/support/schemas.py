"""20 JSON schemas for the structured-output tests (nested objects, enums, arrays, numbers,
strings with patterns and lengths, booleans, nulls, anyOf, const, $defs).

Free strings and arrays are bounded (maxLength / maxItems): a random model that is free to
write a string may never close it within max_tokens, which the grammar cannot prevent (it then
ends with finish reason `length`); with bounds, any model finishes.
"""

from __future__ import annotations

S = {"type": "string", "maxLength": 8}  # a short free string

SCHEMAS: list[dict] = [
    {"type": "object", "properties": {"name": S}, "required": ["name"]},
    {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99}},
     "required": ["n"]},
    {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]},
    {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}},
     "required": ["color"]},
    {"type": "object", "properties": {"x": {"type": "number", "minimum": -10, "maximum": 10}},
     "required": ["x"]},
    {"type": "object", "properties": {"tags": {"type": "array", "items": S, "maxItems": 3}},
     "required": ["tags"]},
    {"type": "object", "properties": {"user": {
        "type": "object", "properties": {"id": {"type": "integer", "minimum": 1,
                                                "maximum": 1000}, "name": S},
        "required": ["id", "name"]}}, "required": ["user"]},
    {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"}},
     "required": ["code"]},
    {"type": "object", "properties": {"v": {"type": "null"}}, "required": ["v"]},
    {"type": "object", "properties": {"kind": {"const": "point"},
                                      "xy": {"type": "array", "items": {"type": "integer",
                                                                        "minimum": 0,
                                                                        "maximum": 9},
                                             "minItems": 2, "maxItems": 2}},
     "required": ["kind", "xy"]},
    {"type": "object", "properties": {"value": {"anyOf": [{"type": "integer", "minimum": 0,
                                                           "maximum": 9}, {"type": "boolean"}]}},
     "required": ["value"]},
    {"type": "object", "properties": {"items": {"type": "array", "maxItems": 2, "items": {
        "type": "object", "properties": {"sku": S, "qty": {"type": "integer", "minimum": 1,
                                                           "maximum": 5}},
        "required": ["sku", "qty"]}}}, "required": ["items"]},
    {"type": "object", "properties": {"level": {"enum": [1, 2, 3]}, "label": {"enum": ["lo",
                                                                                   "hi"]}},
     "required": ["level", "label"]},
    {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {
        "type": "object", "properties": {"c": {"type": "boolean"}}, "required": ["c"]}},
        "required": ["b"]}}, "required": ["a"]},
    {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 1,
     "maxItems": 4},
    {"type": "object", "properties": {"word": {"type": "string", "pattern": "^[a-z]{2,4}$"}},
     "required": ["word"]},
    {"type": "object", "properties": {"price": {"type": "number", "minimum": 0,
                                                "maximum": 100},
                                      "currency": {"enum": ["EUR", "USD"]}},
     "required": ["price", "currency"]},
    {"$defs": {"pt": {"type": "object", "properties": {"x": {"type": "integer", "minimum": 0,
                                                              "maximum": 9}},
                      "required": ["x"]}},
     "type": "object", "properties": {"from": {"$ref": "#/$defs/pt"},
                                      "to": {"$ref": "#/$defs/pt"}},
     "required": ["from", "to"]},
    {"type": "object", "properties": {"flags": {"type": "array", "items": {"type": "boolean"},
                                                "maxItems": 3},
                                      "note": {"type": ["string", "null"], "maxLength": 6}},
     "required": ["flags", "note"]},
    {"type": "object", "properties": {"date": {"type": "string",
                                               "pattern": "^20[0-9]{2}-[01][0-9]-[0-3][0-9]$"},
                                      "count": {"type": "integer", "minimum": -5,
                                                "maximum": 5}},
     "required": ["date", "count"], "additionalProperties": False},
]
