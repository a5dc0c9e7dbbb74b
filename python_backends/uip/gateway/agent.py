"""Server-side tools and the agent loop of `/v1/responses` (ReAct style).

A request's `tools` may hold client functions (`{"type": "function", ...}`: the client runs
them and sends a `function_call_output` item on the next turn) and server tools, built by
`SERVER_TOOLS[type](item, gateway)`: `{"type": "http", "name": N}` (an HTTP tool of the
gateway spec) and the built-in `file_search` (a tool of the loop when the request has other
tools; alone it retrieves before generating, uip.gateway.retrieval). The loop: generate; a
call to a server tool runs it and feeds its output back (another turn); a text answer or a
call to a client function ends the response. Every step is an output item (`function_call`,
`function_call_output`, `message`), stored with the response and appended to its
conversation. The first turn uses the request's `tool_choice`, later ones `auto` (so a forced
call is not repeated for ever) and the last allowed turn (`agent.max_iterations`) `none`, so
the loop ends with an answer.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from uip.gateway import tools
from uip.gateway.errors import ApiError
from uip.gateway.spec import Agent, HttpTool, host_of
from uip.gateway.store import new_id

if TYPE_CHECKING:
    from uip.gateway.state import Gateway


class ToolError(Exception):
    """A server tool failed; its message becomes the tool's output for the model."""


class ServerTool(Protocol):
    function: tools.Function  # what the model sees

    async def run(self, arguments: dict[str, Any]) -> str: ...


class HttpServerTool:
    """An HTTP tool of the gateway spec: POST the arguments as JSON, the body is the output.
    Only `agent.allowed_hosts` are reached; redirects are not followed."""

    def __init__(self, name: str, spec: HttpTool, agent: Agent, client: httpx.AsyncClient):
        self.function = tools.Function(name, spec.description, spec.parameters)
        self.url = spec.url
        self.timeout_s = spec.timeout_s or agent.tool_timeout_s
        self.allowed = {h.lower() for h in agent.allowed_hosts}
        self.max_bytes = agent.max_tool_output_bytes
        self.client = client

    async def run(self, arguments: dict[str, Any]) -> str:
        host = host_of(self.url)
        if host not in self.allowed:
            raise ToolError(f"refused: host {host!r} is not in agent.allowed_hosts")
        try:
            resp = await self.client.post(self.url, json=arguments, timeout=self.timeout_s,
                                          follow_redirects=False)
        except httpx.TimeoutException:
            raise ToolError(f"no answer from {self.url} within {self.timeout_s:g} s") from None
        except httpx.HTTPError as e:
            raise ToolError(f"{self.url} unreachable: {e}") from None
        if resp.is_redirect:
            target = resp.headers.get("location", "")
            raise ToolError(f"refused: {self.url} redirects to {target!r}; redirects are not "
                            "followed (agent.allowed_hosts)")
        if resp.status_code >= 400:
            raise ToolError(f"HTTP {resp.status_code} from {self.url}: {resp.text[:500]}")
        return resp.content[:self.max_bytes].decode("utf-8", "replace")


def _http(item: dict[str, Any], g: Gateway) -> ServerTool:
    name = item.get("name")
    if not isinstance(name, str) or name not in g.spec.tools:
        raise ApiError(400, f"no HTTP tool {name!r} in the gateway spec (known: "
                       f"{sorted(g.spec.tools)})", "tools")
    return HttpServerTool(name, g.spec.tools[name], g.spec.agent, g.http)


class FileSearchTool:
    """The built-in `file_search` tool inside the agent loop: the model asks with a query, the
    output is the chunks found (numbered, with their files); the hits are kept so the answer
    can cite them."""

    def __init__(self, item: dict[str, Any], g: Gateway):
        from pydantic import ValidationError

        from uip.gateway.schemas import FileSearchOption

        try:
            self.option = FileSearchOption.model_validate(item)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ApiError(400, f"file_search tool: {where}: {first['msg']}", "tools") from None
        self.g = g
        self.hits: list = []
        self.function = tools.Function(
            "file_search", "Search the attached files; returns the passages that match.",
            {"type": "object", "properties": {"query": {"type": "string", "maxLength": 64}},
             "required": ["query"]})

    async def run(self, arguments: dict[str, Any]) -> str:
        from uip.gateway.retrieval import gateway_file_search

        query = str(arguments.get("query") or "").strip()
        if not query:
            raise ToolError("file_search needs a query")
        hits = await gateway_file_search(self.g, self.option.vector_store_ids, query,
                                         self.option.max_num_results)
        self.hits += [h for h in hits if h not in self.hits]
        template = self.g.spec.rag.source_template
        return "\n".join(template.format(n=n, filename=h.filename, text=h.text)
                         for n, h in enumerate(hits, 1)) or "(no sources found)"


# tool item type -> its server tool
SERVER_TOOLS: dict[str, Callable[[dict[str, Any], Gateway], ServerTool]] = {
    "http": _http, "file_search": FileSearchTool}


def resolve(items: list[dict[str, Any]], g: Gateway
            ) -> tuple[list[tools.Function], dict[str, ServerTool]]:
    """A request's tools: every function the model may call, and the server tools by name."""
    functions: list[tools.Function] = []
    servers: dict[str, ServerTool] = {}
    for i, item in enumerate(items):
        kind = item.get("type")
        if kind == "function":
            functions.append(tools.function_of(item, f"tools[{i}]"))
        elif kind in SERVER_TOOLS:
            tool = SERVER_TOOLS[kind](item, g)
            servers[tool.function.name] = tool
            functions.append(tool.function)
        else:
            raise ApiError(400, f"tools[{i}]: unknown tool type {kind!r} (function, "
                           f"{', '.join(sorted(SERVER_TOOLS))})", f"tools[{i}].type")
    return functions, servers


def message_item(text: str) -> dict[str, Any]:
    return {"type": "message", "id": new_id("msg"), "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}


def call_item(call: tools.Call) -> dict[str, Any]:
    return {"type": "function_call", "id": new_id("fc"), "call_id": call.call_id,
            "name": call.name, "arguments": call.arguments, "status": "completed"}


def output_item(call: tools.Call, output: str) -> dict[str, Any]:
    return {"type": "function_call_output", "id": new_id("fco"), "call_id": call.call_id,
            "output": output, "status": "completed"}


@dataclass
class Step:
    """One model turn's result."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


Generate = Callable[[list[dict[str, str]], str | None], Awaitable[Step]]


@dataclass
class AgentRun:
    output: list[dict[str, Any]]
    status: str  # completed | incomplete
    reason: str | None  # why incomplete: max_output_tokens | max_iterations
    prompt_tokens: int
    completion_tokens: int


async def run(messages: list[dict[str, str]], plan: tools.ToolPlan,
              servers: dict[str, ServerTool], max_iterations: int,
              generate: Generate) -> AgentRun:
    """The loop: `generate(prompt messages, guide)` for each model turn."""
    output: list[dict[str, Any]] = []
    history = list(messages)
    prompt = completion = 0
    for i in range(max_iterations):
        mode = plan.mode if i == 0 else "none" if i == max_iterations - 1 else "auto"
        step_plan = plan if mode == plan.mode else plan.with_mode(mode)
        step = await generate(step_plan.prompt_messages(history), step_plan.guide())
        prompt += step.prompt_tokens
        completion += step.completion_tokens
        content, call = step_plan.parse(step.text)
        if call is None or content:
            output.append(message_item(content or ""))
        if call is None:
            length = step.finish_reason == "length"
            return AgentRun(output, "incomplete" if length else "completed",
                            "max_output_tokens" if length else None, prompt, completion)
        output.append(call_item(call))
        history.append({"role": "assistant",
                        "content": (content or "") + tools.call_text(call.name,
                                                                     call.arguments)})
        tool = servers.get(call.name)
        if tool is None:  # a client function: the client runs it and sends the output
            return AgentRun(output, "completed", None, prompt, completion)
        try:
            result = await tool.run(json.loads(call.arguments))
        except ToolError as e:
            result = f"error: {e}"
        output.append(output_item(call, result))
        history.append({"role": "tool", "content": result})
    return AgentRun(output, "incomplete", "max_iterations", prompt, completion)
