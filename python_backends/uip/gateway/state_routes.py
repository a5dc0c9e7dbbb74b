"""Stored state: `/v1/responses` (multi-turn by `previous_response_id` or `conversation`) and
`/v1/conversations` with their items, in the database."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from fastapi import APIRouter, Depends, Query

from uip.gateway import agent, sse, structured, tools
from uip.gateway.auth import authorize
from uip.gateway.errors import ApiError, not_found
from uip.gateway.generation import Generation, start
from uip.gateway.llm import GenParams, check_max_tokens
from uip.gateway.retrieval import (
    Retrieved,
    call_item,
    citations,
    file_search_tools,
    retrieve,
)
from uip.gateway.routing import Target, first_available
from uip.gateway.schemas import (
    ConversationCreate,
    ConversationUpdate,
    InputItem,
    InputMessage,
    ItemsCreate,
    ResponseRequest,
    text_of,
)
from uip.gateway.state import Caller, Gateway, gateway
from uip.gateway.store import new_id

router = APIRouter(prefix="/v1")


# ----------------------------------------------------------------------------- items


def message_item(msg: InputMessage) -> dict[str, Any]:
    part = "output_text" if msg.role == "assistant" else "input_text"
    return {"type": "message", "role": msg.role,
            "content": [{"type": part, "text": text_of(msg.content)}]}


def input_items(value: str | list[InputItem]) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"type": "message", "role": "user",
                 "content": [{"type": "input_text", "text": value}]}]
    return [message_item(m) if isinstance(m, InputMessage) else m.model_dump(exclude_none=True)
            for m in value]


def chat_message(item: dict[str, Any]) -> dict[str, str]:
    """An item as a chat message: a function call in the call format the model writes, its
    output as a `tool` message."""
    kind = item.get("type") or "message"
    if kind == "function_call":
        return {"role": "assistant",
                "content": tools.call_text(str(item.get("name")), item.get("arguments") or "")}
    if kind == "function_call_output":
        return {"role": "tool", "content": str(item.get("output", ""))}
    content = item.get("content")
    text = content if isinstance(content, str) else "".join(
        p.get("text", "") for p in content or [] if isinstance(p, dict))
    role = item.get("role", "user")
    return {"role": "system" if role == "developer" else role, "content": text}


def _conversation(row) -> dict[str, Any]:
    return {"id": row.id, "object": "conversation", "created_at": int(row.created_at),
            "metadata": row.meta or {}}


# ------------------------------------------------------------------------- responses


@dataclass
class _Exchange:
    """What a response continues and what it adds: the request, its conversation (if one),
    its new input items, and the chat the model sees (earlier items first)."""

    body: ResponseRequest
    cid: str | None
    new_items: list[dict[str, Any]]
    messages: list[dict[str, str]]


async def _exchange(g: Gateway, body: ResponseRequest) -> _Exchange:
    if body.previous_response_id and body.conversation:
        raise ApiError(400, "give previous_response_id or conversation, not both",
                       "conversation")
    new_items = input_items(body.input)
    cid = None
    if body.previous_response_id:
        earlier = await _chained_items(g, body.previous_response_id)
    elif body.conversation:
        cid = body.conversation if isinstance(body.conversation, str) else body.conversation.id
        earlier = await _conversation_items(g, cid)
    else:
        earlier = []
    return _Exchange(body, cid, new_items, _messages(g, body, earlier + new_items))


async def _chained_items(g: Gateway, response_id: str) -> list[dict[str, Any]]:
    """The input and output items of the responses chained by previous_response_id."""
    store = g.store
    chain = await store.run(store.response_chain, response_id, g.spec.limits.max_context_items)
    if chain is None:
        raise not_found("response", response_id, "previous_response_id")
    items: list[dict[str, Any]] = []
    for row in chain:
        items += row.input_items + row.body.get("output", [])
    return items


async def _conversation_items(g: Gateway, cid: str) -> list[dict[str, Any]]:
    store = g.store
    if await store.run(store.get_conversation, cid) is None:
        raise not_found("conversation", cid, "conversation")
    items, _ = await store.run(store.list_items, cid, g.spec.limits.max_context_items)
    return items


def _messages(g: Gateway, body: ResponseRequest, items: list[dict[str, Any]]
              ) -> list[dict[str, str]]:
    limit = g.spec.limits.max_messages
    messages = [{"role": "system", "content": body.instructions}] if body.instructions else []
    messages += [chat_message(i) for i in items
                 if i.get("type") != "file_search_call"]  # retrieval is not a message
    if len(messages) > limit:
        raise ApiError(400, f"the exchange holds more than {limit} messages "
                       "(limits.max_messages)", "input")
    return messages


def _response(ex: _Exchange, rid: str, created: int, status: str, output: list,
              usage: dict | None) -> dict[str, Any]:
    body = ex.body
    return {"id": rid, "object": "response", "created_at": created, "status": status,
            "model": body.model, "output": output, "instructions": body.instructions,
            "previous_response_id": body.previous_response_id,
            "conversation": {"id": ex.cid} if ex.cid else None, "store": bool(body.store),
            "metadata": body.metadata or {}, "temperature": body.temperature,
            "top_p": body.top_p, "max_output_tokens": body.max_output_tokens,
            "error": None,
            "incomplete_details": ({"reason": "max_output_tokens"}
                                   if status == "incomplete" else None),
            "parallel_tool_calls": False, "tool_choice": body.tool_choice or "auto",
            "tools": body.tools or [], "text": structured.format_echo(body.text),
            "usage": usage}


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {"input_tokens": prompt, "output_tokens": completion,
            "total_tokens": prompt + completion,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0}}


def _triton_targets(g: Gateway, model: str) -> list[Target]:
    targets = [t for t in g.router.targets(model, "llm") if t.triton]
    if not targets:
        raise ApiError(400, f"model {model!r} is external: the Responses API serves "
                       "Triton models only", "model")
    return targets


def _params(g: Gateway, body: ResponseRequest) -> GenParams:
    check_max_tokens(body.max_output_tokens, g.spec.limits, "max_output_tokens")
    return GenParams(body.max_output_tokens or g.spec.limits.default_max_tokens,
                     body.temperature, body.top_p, guide=structured.responses_guide(body.text))


def _agent_tools(g: Gateway, body: ResponseRequest
                 ) -> tuple[tools.ToolPlan | None, dict[str, agent.ServerTool]]:
    """The agent loop's plan (None: no tools to call) and its server tools. With other tools
    file_search is one of them; alone it retrieves before the one generation."""
    others = [t for t in body.tools or [] if t.get("type") != "file_search"]
    functions, servers = agent.resolve(body.tools or [] if others else [], g)
    plan = tools.plan(functions, body.tool_choice, body.parallel_tool_calls)
    return (plan if plan is not None and plan.active else None), servers


@router.post("/responses")
async def create_response(body: ResponseRequest, caller: Caller = Depends(authorize),
                          g: Gateway = Depends(gateway)):
    targets = _triton_targets(g, body.model)
    ex = await _exchange(g, body)
    params = _params(g, body)
    option = file_search_tools(body.tools)
    plan, servers = _agent_tools(g, body)
    if plan is not None and params.guide is not None:
        raise ApiError(400, "text.format cannot be combined with tools unless tool_choice "
                       "is none", "text.format")
    await g.limiter.admit(caller)
    if plan is not None:
        return await _agent_response(g, caller, ex, targets, params, plan, servers)
    found = None if option is None else await retrieve(g, option, ex.messages)
    return await _generated_response(g, caller, ex, targets, params, found)


async def _generated_response(g: Gateway, caller: Caller, ex: _Exchange, targets: list[Target],
                              params: GenParams, found: Retrieved | None):
    """A response of one generation (on what retrieval found, if it ran), streamed as it
    comes or returned whole."""
    messages = ex.messages if found is None else found.messages
    charge = partial(g.record_usage, caller, ex.body.model, "/responses")
    gen = await first_available(targets, lambda t: start(g, t, params, messages,
                                                         charge=charge))
    turn = _Turn(g, ex, gen, found)
    if ex.body.stream:
        return sse.response(turn.events())
    async for _ in turn.texts():
        pass
    return turn.result


async def _store(g: Gateway, ex: _Exchange, result: dict[str, Any]) -> None:
    """The response kept if asked (store), its items added to its conversation (if one)."""
    store = g.store
    if ex.body.store:
        await store.run(store.save_response, result, ex.new_items)
    if ex.cid:
        await store.run(store.add_items, ex.cid, ex.new_items + result["output"])


def _agent_step(g: Gateway, targets: list[Target], params: GenParams) -> agent.Generate:
    """One model turn of the agent loop: a whole generation."""

    async def step(msgs: list[dict[str, str]], guide: str | None) -> agent.Step:
        p = replace(params, guide=guide)
        gen = await first_available(targets, lambda t: start(g, t, p, msgs))
        [c] = await gen.finish()
        return agent.Step(c.text, c.finish_reason or "stop", gen.prompt_tokens,
                          gen.completion_tokens)

    return step


async def _agent_response(g: Gateway, caller: Caller, ex: _Exchange, targets: list[Target],
                          params: GenParams, plan: tools.ToolPlan, servers: dict):
    """A response with tools: the agent loop (uip.gateway.agent), every step an output item.
    Streamed, its events are sent when the loop has finished."""
    rid, created = new_id("resp"), int(time.time())
    done = await agent.run(ex.messages, plan, servers, g.spec.agent.max_iterations,
                           _agent_step(g, targets, params))
    searched = [t for t in servers.values() if isinstance(t, agent.FileSearchTool)]
    for item in done.output:  # the answer cites what file_search found
        if item["type"] == "message" and searched and searched[0].hits:
            part = item["content"][0]
            part["annotations"] = citations(searched[0].hits, part["text"])
    await g.record_usage(caller, ex.body.model, "/responses", done.prompt_tokens,
                         done.completion_tokens)
    result = _response(ex, rid, created, done.status, done.output,
                       _usage(done.prompt_tokens, done.completion_tokens))
    if done.reason is not None:
        result["incomplete_details"] = {"reason": done.reason}
    await _store(g, ex, result)
    if not ex.body.stream:
        return result
    return sse.response(_replay(result))


class _Events:
    """A response's stream events, numbered in order."""

    def __init__(self):
        self.seq = 0

    def __call__(self, kind: str, **fields) -> str:
        self.seq += 1
        return sse.event({"type": kind, "sequence_number": self.seq - 1, **fields}, kind)

    def started(self, response: dict[str, Any]) -> str:
        return (self("response.created", response=response)
                + self("response.in_progress", response=response))

    def ended(self, response: dict[str, Any]) -> str:
        kind = "response.completed" if response["status"] == "completed" else \
            "response.incomplete"
        return self(kind, response=response)


async def _replay(result: dict[str, Any]) -> AsyncIterator[str]:
    """The events of a finished response, item by item."""
    ev = _Events()
    yield ev.started({**result, "status": "in_progress", "output": [], "usage": None})
    for index, item in enumerate(result["output"]):
        if item["type"] == "message":
            yield ev("response.output_item.added", output_index=index,
                     item={**item, "status": "in_progress", "content": []})
            where = {"item_id": item["id"], "output_index": index, "content_index": 0}
            part = {"type": "output_text", "text": "", "annotations": []}
            text = item["content"][0]["text"]
            yield ev("response.content_part.added", part=part, **where)
            if text:
                yield ev("response.output_text.delta", delta=text, logprobs=[], **where)
            yield ev("response.output_text.done", text=text, logprobs=[], **where)
            yield ev("response.content_part.done", part={**part, "text": text}, **where)
        else:
            yield ev("response.output_item.added", output_index=index, item=item)
            if item["type"] == "function_call":
                yield ev("response.function_call_arguments.done", item_id=item["id"],
                         output_index=index, arguments=item["arguments"], name=item["name"])
        yield ev("response.output_item.done", output_index=index, item=item)
    yield ev.ended(result)


class _Turn:
    """One generated response: its text as it comes (collected by its Generation), then the
    response object, stored."""

    def __init__(self, g: Gateway, ex: _Exchange, gen: Generation,
                 found: Retrieved | None = None):
        self.g, self.ex, self.gen = g, ex, gen
        self.rid, self.msg_id = new_id("resp"), new_id("msg")
        self.created = int(time.time())
        self.result: dict[str, Any] = {}
        self.hits = found.hits if found else []
        # output items before the message: the file_search_call of a retrieval
        self.calls = [call_item(found.query, found.hits, "file_search_call.results" in
                                (ex.body.include or []))] if found else []

    def item(self, text: str, status: str) -> dict[str, Any]:
        notes = citations(self.hits, text) if status == "completed" else []
        return {"type": "message", "id": self.msg_id, "status": status, "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": notes}]}

    async def texts(self) -> AsyncIterator[str]:
        """The text deltas as they come; then the finished response (`result`), stored."""
        async with aclosing(self.gen.deltas()) as deltas:
            async for _, text in deltas:
                if text:
                    yield text
        [c] = self.gen.choices
        status = "incomplete" if c.finish_reason == "length" else "completed"
        output = [*self.calls, self.item(c.text, "completed")]
        # usage is due: the prompt is counted now, after the last token
        self.result = _response(self.ex, self.rid, self.created, status, output,
                                _usage(self.gen.prompt_tokens, self.gen.completion_tokens))
        await _store(self.g, self.ex, self.result)

    async def events(self) -> AsyncIterator[str]:
        ev = _Events()
        yield ev.started(_response(self.ex, self.rid, self.created, "in_progress", [], None))
        for at, call in enumerate(self.calls):  # done before generation: reported at once
            yield ev("response.output_item.added", output_index=at,
                     item={**call, "status": "in_progress", "results": None})
            for phase in ("in_progress", "searching", "completed"):
                yield ev(f"response.file_search_call.{phase}", output_index=at,
                         item_id=call["id"])
            yield ev("response.output_item.done", output_index=at, item=call)
        at = len(self.calls)
        yield ev("response.output_item.added", output_index=at,
                 item={**self.item("", "in_progress"), "content": []})
        part = {"type": "output_text", "text": "", "annotations": []}
        where = {"item_id": self.msg_id, "output_index": at, "content_index": 0}
        yield ev("response.content_part.added", part=part, **where)
        try:
            async with aclosing(self.texts()) as texts:
                async for text in texts:
                    yield ev("response.output_text.delta", delta=text, logprobs=[], **where)
        except ApiError as e:
            yield ev("error", code=e.code, message=e.message, param=e.param)
            return
        message = self.result["output"][at]
        done_part = message["content"][0]
        for n, note in enumerate(done_part["annotations"]):
            yield ev("response.output_text.annotation.added", annotation=note,
                     annotation_index=n, **where)
        yield ev("response.output_text.done", text=done_part["text"], logprobs=[], **where)
        yield ev("response.content_part.done", part=done_part, **where)
        yield ev("response.output_item.done", output_index=at, item=message)
        yield ev.ended(self.result)


@router.get("/responses/{response_id}")
async def get_response(response_id: str, caller: Caller = Depends(authorize),
                       g: Gateway = Depends(gateway)):
    row = await g.store.run(g.store.get_response, response_id)
    if row is None:
        raise not_found("response", response_id)
    return row.body


@router.delete("/responses/{response_id}")
async def delete_response(response_id: str, caller: Caller = Depends(authorize),
                          g: Gateway = Depends(gateway)):
    if not await g.store.run(g.store.delete_response, response_id):
        raise not_found("response", response_id)
    return {"id": response_id, "object": "response", "deleted": True}


# --------------------------------------------------------------------- conversations


@router.post("/conversations")
async def create_conversation(body: ConversationCreate | None = None,
                              caller: Caller = Depends(authorize),
                              g: Gateway = Depends(gateway)):
    body = body or ConversationCreate()
    items = [message_item(m) for m in body.items or []]
    row = await g.store.run(g.store.create_conversation, body.metadata or {}, items)
    return _conversation(row)


async def _existing(g: Gateway, cid: str):
    row = await g.store.run(g.store.get_conversation, cid)
    if row is None:
        raise not_found("conversation", cid)
    return row


@router.get("/conversations/{conversation_id}")
async def get_conversation(conversation_id: str, caller: Caller = Depends(authorize),
                           g: Gateway = Depends(gateway)):
    return _conversation(await _existing(g, conversation_id))


@router.post("/conversations/{conversation_id}")
async def update_conversation(conversation_id: str, body: ConversationUpdate,
                              caller: Caller = Depends(authorize),
                              g: Gateway = Depends(gateway)):
    row = await g.store.run(g.store.update_conversation, conversation_id, body.metadata)
    if row is None:
        raise not_found("conversation", conversation_id)
    return _conversation(row)


@router.delete("/conversations/{conversation_id}")
async def delete_conversation(conversation_id: str, caller: Caller = Depends(authorize),
                              g: Gateway = Depends(gateway)):
    if not await g.store.run(g.store.delete_conversation, conversation_id):
        raise not_found("conversation", conversation_id)
    return {"id": conversation_id, "object": "conversation.deleted", "deleted": True}


def _page(items: list[dict], has_more: bool) -> dict[str, Any]:
    return {"object": "list", "data": items, "first_id": items[0]["id"] if items else None,
            "last_id": items[-1]["id"] if items else None, "has_more": has_more}


@router.get("/conversations/{conversation_id}/items")
async def list_items(conversation_id: str, limit: int = Query(20, ge=1),
                     order: str = Query("asc", pattern="^(asc|desc)$"),
                     after: str | None = None, caller: Caller = Depends(authorize),
                     g: Gateway = Depends(gateway)):
    await _existing(g, conversation_id)
    limit = min(limit, g.spec.limits.max_list_items)
    items, more = await g.store.run(g.store.list_items, conversation_id, limit, order, after)
    return _page(items, more)


@router.post("/conversations/{conversation_id}/items")
async def add_items(conversation_id: str, body: ItemsCreate,
                    caller: Caller = Depends(authorize), g: Gateway = Depends(gateway)):
    await _existing(g, conversation_id)
    items = await g.store.run(g.store.add_items, conversation_id,
                              [message_item(m) for m in body.items])
    return _page(items, False)


@router.get("/conversations/{conversation_id}/items/{item_id}")
async def get_item(conversation_id: str, item_id: str, caller: Caller = Depends(authorize),
                   g: Gateway = Depends(gateway)):
    item = await g.store.run(g.store.get_item, conversation_id, item_id)
    if item is None:
        raise not_found("conversation item", item_id)
    return item


@router.delete("/conversations/{conversation_id}/items/{item_id}")
async def delete_item(conversation_id: str, item_id: str, caller: Caller = Depends(authorize),
                      g: Gateway = Depends(gateway)):
    row = await _existing(g, conversation_id)
    if not await g.store.run(g.store.delete_item, conversation_id, item_id):
        raise not_found("conversation item", item_id)
    return _conversation(row)
