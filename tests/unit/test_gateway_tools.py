"""Tool calling and the agent loop of the gateway, without Triton: the plan's grammar and
parsing (uip.gateway.tools), HTTP tools against a real local HTTP server (allow-list,
redirects, timeout), the loop over a scripted model, and the spec's allow-list."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from support.local_http import JsonToolHandler, serving

from uip.gateway import agent, tools
from uip.gateway.errors import ApiError
from uip.gateway.spec import Agent, GatewaySpec, HttpTool

WEATHER = tools.Function("weather", "the weather in a city", {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
CLOCK = tools.Function("clock")


def test_plan_modes_and_guides():
    assert tools.plan([], None, None) is None
    auto = tools.plan([WEATHER, CLOCK], None, None)
    assert auto.mode == "auto"
    fmt = json.loads(auto.guide())["format"]
    assert fmt["type"] == "triggered_tags" and fmt["triggers"] == [tools.OPEN]
    assert fmt["stop_after_first"] and fmt["tags"][0]["content"]["json_schema"] == \
        WEATHER.parameters
    named = tools.plan([WEATHER, CLOCK], {"type": "function", "function": {"name": "clock"}},
                       False)
    schema = json.loads(named.guide())["schema"]
    assert schema["properties"]["name"] == {"const": "clock"}
    required = tools.plan([WEATHER, CLOCK], "required", None)
    assert len(json.loads(required.guide())["schema"]["anyOf"]) == 2
    none = tools.plan([WEATHER], "none", None)
    assert not none.active and none.guide() is None


@pytest.mark.parametrize("choice, parallel, word", [
    ("sometimes", None, "tool_choice"), ({"type": "function", "name": "nope"}, None, "nope"),
    ("auto", True, "parallel"),
])
def test_plan_refuses_bad_choices(choice, parallel, word):
    with pytest.raises(ApiError, match=word):
        tools.plan([WEATHER], choice, parallel)


def test_parse_auto_and_forced_outputs():
    auto = tools.plan([WEATHER], "auto", None)
    assert auto.parse("just text") == ("just text", None)
    content, call = auto.parse('Let me see. <tool_call>{"name": "weather", "arguments": '
                               '{"city": "Oslo"}}</tool_call>')
    assert content == "Let me see." and call.name == "weather"
    assert json.loads(call.arguments) == {"city": "Oslo"} and call.call_id.startswith("call_")
    forced = tools.plan([WEATHER], "required", None)
    assert forced.parse('{"name": "weather", "arguments": {"city": "x"}}')[1].name == "weather"
    assert forced.parse('{"name": "weather", "argu') == ('{"name": "weather", "argu', None)


def test_function_of_checks_the_schema():
    f = tools.function_of({"type": "function", "function": {"name": "f"}}, "tools[0]")
    assert f.parameters == {"type": "object", "properties": {}}
    with pytest.raises(ApiError, match="invalid JSON schema"):
        tools.function_of({"type": "function", "name": "f", "parameters": {"type": 5}}, "t")


def test_spec_refuses_tools_outside_the_allow_list():
    ok = GatewaySpec.model_validate({"tools": {"w": {"url": "http://127.0.0.1:1/w"}}})
    assert ok.tools["w"].url.endswith("/w")
    with pytest.raises(ValueError, match="host 'example.com' is not in agent.allowed_hosts"):
        GatewaySpec.model_validate({"tools": {"w": {"url": "https://example.com/w"}}})


class _Handler(JsonToolHandler):
    redirects = ("/redirect",)

    def reply(self, path, body):
        return (500 if path == "/fail" else 200), {"echo": body}


@pytest.fixture(scope="module")
def http_server():
    yield from serving(_Handler)


def _tool(url: str, **agent_kw) -> agent.HttpServerTool:
    return agent.HttpServerTool("t", HttpTool(url=url), Agent(**agent_kw), httpx.AsyncClient())


def test_http_tool_posts_arguments_and_refuses_other_hosts(http_server):
    assert json.loads(asyncio.run(_tool(http_server + "/ok").run({"a": 1}))) == \
        {"echo": {"a": 1}}
    with pytest.raises(agent.ToolError, match="redirects are not followed"):
        asyncio.run(_tool(http_server + "/redirect").run({}))
    with pytest.raises(agent.ToolError, match="HTTP 500"):
        asyncio.run(_tool(http_server + "/fail").run({}))
    with pytest.raises(agent.ToolError, match="not in agent.allowed_hosts"):
        asyncio.run(_tool(http_server + "/ok", allowed_hosts=["localhost"]).run({}))


def _scripted(*texts: str):
    calls = []

    async def generate(messages, guide):
        calls.append((messages, guide))
        return agent.Step(texts[len(calls) - 1], "stop", 10, 5)

    return generate, calls


def test_agent_loop_runs_server_tools_and_ends_with_the_answer(http_server):
    tool = _tool(http_server + "/ok")
    plan = tools.plan([tool.function], "required", None)
    gen, calls = _scripted('{"name": "t", "arguments": {"q": 1}}', "All done.")
    done = asyncio.run(agent.run([{"role": "user", "content": "go"}], plan, {"t": tool}, 4, gen))
    assert [i["type"] for i in done.output] == ["function_call", "function_call_output",
                                                "message"]
    assert json.loads(done.output[1]["output"]) == {"echo": {"q": 1}}
    assert done.output[0]["call_id"] == done.output[1]["call_id"]
    assert done.status == "completed" and done.prompt_tokens == 20
    # the second turn saw the call and its result, and was no longer forced
    assert calls[1][0][-1] == {"role": "tool", "content": done.output[1]["output"]}
    assert json.loads(calls[1][1])["type"] == "structural_tag"


def test_agent_loop_stops_at_client_functions_and_at_max_iterations(http_server):
    plan = tools.plan([WEATHER], "required", None)
    gen, _ = _scripted('{"name": "weather", "arguments": {"city": "x"}}')
    done = asyncio.run(agent.run([], plan, {}, 4, gen))
    assert [i["type"] for i in done.output] == ["function_call"] and done.status == "completed"
    tool = _tool(http_server + "/ok")
    plan = tools.plan([tool.function], "required", None)
    gen, calls = _scripted('{"name": "t", "arguments": {}}', "answer")
    done = asyncio.run(agent.run([], plan, {"t": tool}, 2, gen))
    assert calls[1][1] is None  # the last allowed turn has no tools: it answers
    assert done.output[-1]["type"] == "message"
    gen, _ = _scripted('{"name": "t", "arguments": {}}')
    done = asyncio.run(agent.run([], plan, {"t": tool}, 1, gen))
    assert done.status == "incomplete" and done.reason == "max_iterations"


def test_response_formats_become_guides_and_bad_schemas_are_400():
    from uip.gateway import structured
    from uip.gateway.schemas import ResponseFormat, TextConfig

    assert structured.chat_guide(ResponseFormat(type="text")) is None
    assert json.loads(structured.chat_guide(ResponseFormat(type="json_object"))) == \
        {"type": "json_object"}
    fmt = ResponseFormat.model_validate({"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "integer"}, "strict": True}})
    assert json.loads(structured.chat_guide(fmt))["schema"] == {"type": "integer"}
    text = TextConfig.model_validate({"format": {"type": "json_schema", "name": "x",
                                                 "schema": {"type": "boolean"}}})
    assert json.loads(structured.responses_guide(text))["schema"] == {"type": "boolean"}
    assert structured.format_echo(text)["format"]["schema"] == {"type": "boolean"}
    with pytest.raises(ApiError, match="needs 'json_schema'"):
        structured.chat_guide(ResponseFormat(type="json_schema"))
    bad = ResponseFormat.model_validate({"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": {"a": {"minimum": "0"}}}}})
    with pytest.raises(ApiError, match="invalid JSON schema at properties/a/minimum"):
        structured.chat_guide(bad)
