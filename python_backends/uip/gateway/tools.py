"""Tool calling over our LLMs: `tools` / `tool_choice` as a prompt and a grammar, and the
model's output back as tool calls.

The call format is the Hermes / Qwen one: `<tool_call>{"name": NAME, "arguments": {...}}
</tool_call>`. The gateway lists the tools (their JSON schemas) in a system message with that
format (the model's chat template's own tool syntax is not used), and guides the output
through the `guided_decoding` grammar path (uip.llm.guided):
- `none`: no tools in the prompt, no grammar, text comes back;
- `auto` (the default with tools): a structural tag, so the text is free until the model
  writes `<tool_call>`; from there the call must be `{"name": one of the tools, "arguments":
  valid for that tool's schema}` and the output ends after `</tool_call>`. A call is detected
  by that tag in the output; text before it is the message's content;
- `required` / a named function: the whole output is the call's JSON, forced by a JSON schema
  (`anyOf` over the tools, or the named one), so its arguments always validate.
One call per turn: parallel tool calls are off (`parallel_tool_calls: true` is refused).
A call cut by `max_tokens` comes back as text with finish reason `length`.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from uip.gateway.errors import ApiError

OPEN, CLOSE = "<tool_call>", "</tool_call>"
MODES = ("none", "auto", "required")


@dataclass(frozen=True)
class Function:
    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object",
                                                                "properties": {}})

    def openai(self) -> dict[str, Any]:
        return {"type": "function", "function": {"name": self.name,
                                                 "description": self.description,
                                                 "parameters": self.parameters}}


@dataclass(frozen=True)
class Call:
    call_id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it

    def chat(self) -> dict[str, Any]:
        return {"id": self.call_id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def function_of(spec: dict[str, Any], param: str) -> Function:
    """A function tool in the chat shape ({"type", "function": {...}}) or the Responses shape
    ({"type", "name", ...})."""
    from uip.gateway.structured import check_schema

    body = spec.get("function") if isinstance(spec.get("function"), dict) else spec
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise ApiError(400, "a function tool needs a name", param)
    params = body.get("parameters")
    if params is None:
        params = {"type": "object", "properties": {}}
    check_schema(params, f"{param}.parameters")
    return Function(name, str(body.get("description") or ""), params)


def _call_schema(f: Function) -> dict[str, Any]:
    return {"type": "object", "properties": {"name": {"const": f.name},
                                             "arguments": f.parameters},
            "required": ["name", "arguments"], "additionalProperties": False}


@dataclass
class ToolPlan:
    """The tools a turn offers and how the model must use them."""

    functions: list[Function]
    mode: str = "auto"  # none | auto | required | named
    named: str | None = None

    @property
    def active(self) -> bool:
        return self.mode != "none" and bool(self.functions)

    def with_mode(self, mode: str) -> ToolPlan:
        return ToolPlan(self.functions, mode, None)

    def guide(self) -> str | None:
        """The guided_decoding text of this turn (None: free text)."""
        if not self.active:
            return None
        if self.mode == "auto":
            tags = [{"type": "tag", "begin": f'{OPEN}{{"name": {json.dumps(f.name)}, '
                                             '"arguments": ',
                     "content": {"type": "json_schema", "json_schema": f.parameters},
                     "end": "}" + CLOSE} for f in self.functions]
            return json.dumps({"type": "structural_tag", "format": {
                "type": "triggered_tags", "triggers": [OPEN], "tags": tags,
                "stop_after_first": True}})
        chosen = [f for f in self.functions if self.mode != "named" or f.name == self.named]
        schemas = [_call_schema(f) for f in chosen]
        schema = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
        return json.dumps({"type": "json_schema", "schema": schema})

    def system_text(self) -> str:
        lines = "\n".join(json.dumps(f.openai()["function"]) for f in self.functions)
        return ("You can call functions. Their JSON schemas:\n<tools>\n" + lines +
                "\n</tools>\nTo call one, answer with " + OPEN +
                '{"name": NAME, "arguments": ARGUMENTS}' + CLOSE + ".")

    def prompt_messages(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        """The chat messages with the tools described in the system message."""
        if not self.active:
            return messages
        text = self.system_text()
        if messages and messages[0]["role"] == "system":
            return [{"role": "system", "content": messages[0]["content"] + "\n\n" + text},
                    *messages[1:]]
        return [{"role": "system", "content": text}, *messages]

    def parse(self, text: str) -> tuple[str | None, Call | None]:
        """The model's output -> (content, the call if it made one)."""
        if not self.active:
            return text, None
        if self.mode == "auto":
            start = text.find(OPEN)
            if start < 0:
                return text, None
            body = text[start + len(OPEN):]
            body = body[:body.rfind(CLOSE)] if CLOSE in body else body
            content = text[:start].strip() or None
        else:
            body, content = text, None
        try:
            data = json.loads(body)
            name, args = data["name"], data["arguments"]
        except (ValueError, KeyError, TypeError):
            return text, None  # not a complete call (e.g. cut by max_tokens)
        if not any(f.name == name for f in self.functions):
            return text, None
        return content, Call(new_call_id(), name, json.dumps(args))


def _choice(value: str | dict[str, Any] | None, names: set[str]) -> tuple[str, str | None]:
    if value is None:
        return "auto", None
    if isinstance(value, str):
        if value not in MODES:
            raise ApiError(400, f"tool_choice must be one of {list(MODES)} or a function",
                           "tool_choice", "invalid_value")
        return value, None
    body = value.get("function") if isinstance(value.get("function"), dict) else value
    name = body.get("name") if isinstance(body, dict) else None
    if value.get("type") != "function" or not isinstance(name, str):
        raise ApiError(400, 'tool_choice object must be {"type": "function", ...} naming a '
                       "function", "tool_choice", "invalid_value")
    if name not in names:
        raise ApiError(400, f"tool_choice names {name!r}, which is not in tools",
                       "tool_choice", "invalid_value")
    return "named", name


def plan(functions: list[Function], tool_choice, parallel: bool | None) -> ToolPlan | None:
    """The plan of a request's tools (None without tools)."""
    if parallel:
        raise ApiError(400, "parallel tool calls are not supported: one call per turn "
                       "(send parallel_tool_calls false or leave it out)",
                       "parallel_tool_calls", "unsupported_value")
    names = [f.name for f in functions]
    if len(set(names)) != len(names):
        raise ApiError(400, "tool names must be unique", "tools")
    if not functions:
        if tool_choice not in (None, "none", "auto"):
            raise ApiError(400, "tool_choice needs tools", "tool_choice")
        return None
    mode, named = _choice(tool_choice, set(names))
    return ToolPlan(functions, mode, named)


def call_text(name: str, arguments: str) -> str:
    """An earlier call as the model wrote it (history in the prompt)."""
    try:
        args = json.dumps(json.loads(arguments or "{}"))
    except ValueError:
        args = json.dumps(arguments)
    return f'{OPEN}{{"name": {json.dumps(name)}, "arguments": {args}}}{CLOSE}'
