"""Structured output, tool calling and the agent loop over the real tritonserver, through the
gateway with the `openai` client and through Triton directly (tiny random model).

20 JSON schemas: every output parses and validates (jsonschema). A named or required
tool_choice returns a call whose arguments validate; `auto` with this model returns text;
tool results feed the next turn. An agent run with an HTTP tool on 127.0.0.1 completes and
stores its steps; a tool that redirects to another host is refused.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema
import openai
import pytest
import yaml
from support.gateway import GatewayProcess
from support.gateway_fixtures import write_spec
from support.local_http import JsonToolHandler, serving
from support.schemas import SCHEMAS

from uip.clients.llm import GenerateError, generate_grpc
from uip.launch.command import free_port

MESSAGES = [{"role": "user", "content": "Describe the item as JSON."}]
WEATHER = {"type": "object", "properties": {
    "city": {"type": "string", "maxLength": 10},
    "unit": {"enum": ["C", "F"]}}, "required": ["city", "unit"]}
TOOLS = [{"type": "function", "function": {"name": "weather", "description": "weather now",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "clock", "description": "the time",
                                           "parameters": {"type": "object", "properties": {
                                               "tz": {"enum": ["UTC", "CET"]}},
                                               "required": ["tz"]}}}]


class _ToolServer(JsonToolHandler):
    redirects = ("/moved",)

    def reply(self, path, body):
        return 200, {"temperature": 21, "asked": body}


@pytest.fixture(scope="module")
def tool_server():
    yield from serving(_ToolServer)


@pytest.fixture(scope="module")
def gw(server, tool_server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gateway-structured")
    port = free_port()
    spec = write_spec(folder, port)
    data = yaml.safe_load(spec.read_text())
    data["tools"] = {
        "lookup": {"description": "look a city up", "url": f"{tool_server}/lookup",
                   "parameters": WEATHER, "timeout_s": 10},
        "moved": {"description": "a tool that redirects", "url": f"{tool_server}/moved",
                  "parameters": {"type": "object", "properties": {}}}}
    data["agent"] = {"max_iterations": 3, "allowed_hosts": ["127.0.0.1"]}
    spec.write_text(yaml.safe_dump(data))
    proc = GatewayProcess(server.grpc_url, f"sqlite:///{folder / 'gateway.db'}",
                          folder / "gateway.log", spec, port).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(gw):
    return openai.OpenAI(base_url=gw.base_url, api_key="none", max_retries=0, timeout=180)


def _schema_format(i: int) -> dict:
    return {"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": SCHEMAS[i],
                                                   "strict": True}}


def test_20_schemas_validate_through_the_gateway(client):
    def one(i: int):
        out = client.chat.completions.create(model="llm_bls", messages=MESSAGES,
                                             max_tokens=256, response_format=_schema_format(i))
        return i, out.choices[0]

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(one, range(len(SCHEMAS))))
    for i, choice in results:
        assert choice.finish_reason == "stop", (i, choice.message.content)
        jsonschema.validate(json.loads(choice.message.content), SCHEMAS[i])


def test_structured_output_streams_and_works_on_responses(client):
    chunks = client.chat.completions.create(model="llm", messages=MESSAGES, max_tokens=256,
                                            response_format=_schema_format(6), stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    jsonschema.validate(json.loads(text), SCHEMAS[6])
    r = client.responses.create(model="llm_bls", input="Give a point.", max_output_tokens=256,
                                text={"format": {"type": "json_schema", "name": "pt",
                                                 "schema": SCHEMAS[9], "strict": True}})
    assert r.status == "completed" and r.text.format.type == "json_schema"
    jsonschema.validate(json.loads(r.output_text), SCHEMAS[9])
    obj = client.chat.completions.create(model="llm_bls", messages=MESSAGES, max_tokens=400,
                                         response_format={"type": "json_object"}, seed=3)
    if obj.choices[0].finish_reason == "stop":  # free JSON may run past max_tokens
        assert isinstance(json.loads(obj.choices[0].message.content), dict)
    else:
        assert obj.choices[0].message.content.startswith("{")


def test_a_grammar_cut_by_max_tokens_ends_with_length(client):
    out = client.chat.completions.create(model="llm_bls", messages=MESSAGES, max_tokens=4,
                                         response_format=_schema_format(11))
    assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens == 4


def test_invalid_schemas_are_400_naming_the_problem(client):
    with pytest.raises(openai.BadRequestError, match="invalid JSON schema"):
        client.chat.completions.create(model="llm_bls", messages=MESSAGES, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "wat"}}})
    # valid JSON Schema that xgrammar cannot compile: refused by llm_engine (INVALID_ARG)
    with pytest.raises(openai.BadRequestError, match="cannot be compiled"):
        client.chat.completions.create(model="llm_bls", messages=MESSAGES, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {
                "type": "object", "properties": {"a": {"$ref": "#/missing"}}}}})


@pytest.mark.parametrize("model", ["llm", "llm_bls"])
def test_guided_decoding_through_triton_directly(server, model):
    guide = json.dumps({"type": "json_schema", "schema": SCHEMAS[3]})
    gen = generate_grpc(server.grpc_url, model, "Hello", max_tokens=64, guided_decoding=guide)
    assert gen.finish_reason == "stop"
    jsonschema.validate(json.loads(gen.text), SCHEMAS[3])
    with pytest.raises(GenerateError, match="guided_decoding"):
        generate_grpc(server.grpc_url, model, "Hello", max_tokens=8,
                      guided_decoding='{"type": "regex", "pattern": "(open"}')


# ------------------------------------------------------------------------------- tools


def test_named_and_required_tool_choice_return_valid_calls(client):
    named = client.chat.completions.create(
        model="llm_bls", messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=TOOLS, tool_choice={"type": "function", "function": {"name": "weather"}},
        max_tokens=128)
    choice = named.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.function.name == "weather" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), WEATHER)
    required = client.chat.completions.create(model="llm_bls", messages=MESSAGES, tools=TOOLS,
                                              tool_choice="required", max_tokens=128)
    call2 = required.choices[0].message.tool_calls[0]
    params = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    jsonschema.validate(json.loads(call2.function.arguments), params[call2.function.name])
    # the result fed back on the next turn (role tool), then a plain text answer
    follow = client.chat.completions.create(model="llm_bls", max_tokens=8, tools=TOOLS,
                                            tool_choice="none", messages=[
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'}])
    assert follow.choices[0].message.tool_calls is None
    base = client.chat.completions.create(model="llm_bls", max_tokens=1, messages=[
        {"role": "user", "content": "Weather in Oslo?"}])
    assert follow.usage.prompt_tokens > base.usage.prompt_tokens + 10  # call + result in it


def test_auto_with_a_text_answering_model_returns_text(client):
    out = client.chat.completions.create(model="llm_bls", messages=MESSAGES, tools=TOOLS,
                                         max_tokens=16)
    assert out.choices[0].message.tool_calls is None and out.choices[0].message.content
    stream = client.chat.completions.create(model="llm_bls", messages=MESSAGES, tools=TOOLS,
                                            tool_choice="required", max_tokens=128,
                                            stream=True)
    deltas = [c.choices[0].delta for c in stream if c.choices]
    calls = [tc for d in deltas for tc in d.tool_calls or []]
    assert len(calls) == 1 and calls[0].function.name in ("weather", "clock")
    with pytest.raises(openai.BadRequestError, match="parallel"):
        client.chat.completions.create(model="llm_bls", messages=MESSAGES, tools=TOOLS,
                                       parallel_tool_calls=True)


def test_responses_function_call_and_its_output_on_the_next_turn(client):
    tools = [{"type": "function", "name": "weather", "parameters": WEATHER}]
    r1 = client.responses.create(model="llm_bls", input="Weather in Oslo?", tools=tools,
                                 tool_choice="required", max_output_tokens=128)
    assert [o.type for o in r1.output] == ["function_call"]
    call = r1.output[0]
    jsonschema.validate(json.loads(call.arguments), WEATHER)
    r2 = client.responses.create(
        model="llm_bls", previous_response_id=r1.id, tools=tools, max_output_tokens=8,
        input=[{"type": "function_call_output", "call_id": call.call_id,
                "output": '{"temperature": 21}'}])
    assert r2.status in ("completed", "incomplete") and r2.output[-1].type == "message"
    assert r2.usage.input_tokens > r1.usage.input_tokens


def _answered(r) -> None:
    """The loop ended with an answer: complete, or its last turn cut by max_output_tokens
    (the random model rarely writes EOS), never stopped by max_iterations."""
    assert r.output[-1].type == "message"
    assert r.status == "completed" or r.incomplete_details.reason == "max_output_tokens"


def test_agent_run_with_an_http_tool_completes_and_stores_its_steps(client, gw):
    _ToolServer.seen.clear()
    conv = client.conversations.create()
    r = client.responses.create(model="llm_bls", input="Weather in Oslo?",
                                tools=[{"type": "http", "name": "lookup"}],
                                tool_choice="required", max_output_tokens=64,
                                conversation=conv.id)
    kinds = [o.type for o in r.output]
    assert kinds[:2] == ["function_call", "function_call_output"] and kinds[-1] == "message"
    _answered(r)
    call, result = r.output[0], r.output[1]
    args = json.loads(call.arguments)
    jsonschema.validate(args, WEATHER)
    assert _ToolServer.seen == [("/lookup", args)]  # the tool got the model's arguments
    assert json.loads(result.output) == {"temperature": 21, "asked": args}
    assert result.call_id == call.call_id
    stored = httpx.get(f"{gw.base_url}/responses/{r.id}", timeout=10).json()
    assert [o["type"] for o in stored["output"]] == kinds
    items = client.conversations.items.list(conv.id)
    assert [i.type for i in items.data] == ["message", *kinds]


def test_agent_refuses_a_redirect_to_another_host_and_streams(client):
    _ToolServer.seen.clear()
    events = list(client.responses.create(model="llm_bls", input="Go",
                                          tools=[{"type": "http", "name": "moved"}],
                                          tool_choice="required", max_output_tokens=32,
                                          stream=True))
    done = events[-1].response
    assert events[0].type == "response.created"
    assert events[-1].type == f"response.{done.status}"
    _answered(done)
    out = [o for o in done.output if o.type == "function_call_output"][0]
    assert "refused" in out.output and "example.com" in out.output
    assert [p for p, _ in _ToolServer.seen] == ["/moved"]  # nothing followed the redirect
    with pytest.raises(openai.BadRequestError, match="no HTTP tool"):
        client.responses.create(model="llm_bls", input="Go",
                                tools=[{"type": "http", "name": "elsewhere"}])
