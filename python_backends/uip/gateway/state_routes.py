"""Stored state: `/v1/responses` (multi-turn by `previous_response_id` or `conversation`) and
`/v1/conversations` with their items, in the database."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Depends, Query

from uip.gateway import agent, sse, structured, tools
from uip.gateway.auth import authorize
from uip.gateway.chat_template import prompt_of
from uip.gateway.errors import ApiError, not_found
from uip.gateway.llm import Delta, GenParams, check_max_tokens, collect, generate
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


async def _context(g: Gateway, body: ResponseRequest) -> tuple[list[dict], str | None]:
    """Earlier items of this exchange, and the conversation id if one is used."""
    store, limit = g.store, g.spec.limits.max_context_items
    if body.previous_response_id and body.conversation:
        raise ApiError(400, "give previous_response_id or conversation, not both",
                       "conversation")
    if body.previous_response_id:
        chain = await store.run(store.response_chain, body.previous_response_id, limit)
        if chain is None:
            raise not_found("response", body.previous_response_id, "previous_response_id")
        items: list[dict] = []
        for row in chain:
            items += row.input_items + row.body.get("output", [])
        return items, None
    if body.conversation:
        cid = body.conversation if isinstance(body.conversation, str) else body.conversation.id
        if await store.run(store.get_conversation, cid) is None:
            raise not_found("conversation", cid, "conversation")
        items, _ = await store.run(store.list_items, cid, limit)
        return items, cid
    return [], None


def _response(body: ResponseRequest, rid: str, created: int, cid: str | None,
              status: str, output: list, usage: dict | None) -> dict[str, Any]:
    return {"id": rid, "object": "response", "created_at": created, "status": status,
            "model": body.model, "output": output, "instructions": body.instructions,
            "previous_response_id": body.previous_response_id,
            "conversation": {"id": cid} if cid else None, "store": bool(body.store),
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


@router.post("/responses")
async def create_response(body: ResponseRequest, caller: Caller = Depends(authorize),
                          g: Gateway = Depends(gateway)):
    targets = [t for t in g.router.targets(body.model, "llm") if t.triton]
    if not targets:
        raise ApiError(400, f"model {body.model!r} is external: the Responses API serves "
                       "Triton models only", "model")
    new_items = input_items(body.input)
    context, cid = await _context(g, body)
    messages = [{"role": "system", "content": body.instructions}] if body.instructions else []
    messages += [chat_message(i) for i in context + new_items
                 if i.get("type") != "file_search_call"]  # retrieval is not a message
    if len(messages) > g.spec.limits.max_messages:
        raise ApiError(400, f"the exchange holds more than {g.spec.limits.max_messages} "
                       "messages (limits.max_messages)", "input")
    check_max_tokens(body.max_output_tokens, g.spec.limits, "max_output_tokens")
    params = GenParams(body.max_output_tokens or g.spec.limits.default_max_tokens,
                       body.temperature, body.top_p, guide=structured.responses_guide(body.text))
    option = file_search_tools(body.tools)
    others = [t for t in body.tools or [] if t.get("type") != "file_search"]
    # with other tools file_search is one of the agent's tools; alone it retrieves first
    functions, servers = agent.resolve(body.tools or [] if others else [], g)
    plan = tools.plan(functions, body.tool_choice, body.parallel_tool_calls)
    if plan is not None and plan.active:
        if params.guide is not None:
            raise ApiError(400, "text.format cannot be combined with tools unless tool_choice "
                           "is none", "text.format")
        g.limiter.admit(caller)
        return await _agent_turn(g, caller, body, targets, messages, params, plan, servers,
                                 cid, new_items)
    g.limiter.admit(caller)
    found = None
    if option is not None:  # retrieval first: the prompt holds what it found
        found = await retrieve(g, option, messages)
        messages = found.messages

    async def attempt(target: Target):
        prompt, tokens = prompt_of(target.tokenizer, messages)
        deltas = generate(g.triton, target.triton, prompt, params,
                          g.spec.limits.stream_timeout_s)
        return tokens, await anext(deltas), deltas

    prompt_tokens, first, deltas = await first_available(targets, attempt)
    turn = _Turn(g, caller, body, cid, new_items, prompt_tokens, found)
    if body.stream:
        return sse.response(turn.events(first, deltas))
    async for _ in turn.run(first, deltas):
        pass
    return turn.result


async def _store(g: Gateway, body: ResponseRequest, result: dict[str, Any], cid: str | None,
                 new_items: list[dict]) -> None:
    store = g.store
    if body.store:
        await store.run(store.save_response, result, new_items)
    if cid:
        await store.run(store.add_items, cid, new_items + result["output"])


async def _agent_turn(g: Gateway, caller: Caller, body: ResponseRequest, targets: list[Target],
                      messages: list[dict], params: GenParams, plan: tools.ToolPlan,
                      servers: dict, cid: str | None, new_items: list[dict]):
    """A response with tools: the agent loop (uip.gateway.agent), every step an output item.
    Streamed, its events are sent when the loop has finished."""
    timeout = g.spec.limits.stream_timeout_s

    async def step(msgs: list[dict[str, str]], guide: str | None) -> agent.Step:
        p = replace(params, guide=guide)

        async def attempt(target: Target):
            prompt, tokens = prompt_of(target.tokenizer, msgs)
            deltas = generate(g.triton, target.triton, prompt, p, timeout)
            return tokens, await anext(deltas), deltas

        tokens, first, deltas = await first_available(targets, attempt)

        async def chain():
            yield first
            async for d in deltas:
                yield d

        comp = await collect(chain())
        return agent.Step(comp.text, comp.finish_reason, tokens, comp.completion_tokens)

    rid, created = new_id("resp"), int(time.time())
    done = await agent.run(messages, plan, servers, g.spec.agent.max_iterations, step)
    searched = [t for t in servers.values() if isinstance(t, agent.FileSearchTool)]
    for item in done.output:  # the answer cites what file_search found
        if item["type"] == "message" and searched and searched[0].hits:
            part = item["content"][0]
            part["annotations"] = citations(searched[0].hits, part["text"])
    await g.record_usage(caller, body.model, "/responses", done.prompt_tokens,
                         done.completion_tokens)
    result = _response(body, rid, created, cid, done.status, done.output,
                       _usage(done.prompt_tokens, done.completion_tokens))
    if done.reason is not None:
        result["incomplete_details"] = {"reason": done.reason}
    await _store(g, body, result, cid, new_items)
    if not body.stream:
        return result
    return sse.response(_replay(body, result, cid))


async def _replay(body: ResponseRequest, result: dict[str, Any], cid: str | None
                  ) -> AsyncIterator[str]:
    """The events of a finished response, item by item."""
    seq = 0

    def ev(kind: str, **fields) -> str:
        nonlocal seq
        seq += 1
        return sse.event({"type": kind, "sequence_number": seq - 1, **fields}, kind)

    started = {**result, "status": "in_progress", "output": [], "usage": None}
    yield ev("response.created", response=started)
    yield ev("response.in_progress", response=started)
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
    kind = "response.completed" if result["status"] == "completed" else "response.incomplete"
    yield ev(kind, response=result)


class _Turn:
    """One response being generated: its deltas, then storing it and its usage."""

    def __init__(self, g: Gateway, caller: Caller, body: ResponseRequest, cid: str | None,
                 new_items: list[dict], prompt_tokens: int, found: Retrieved | None = None):
        self.g, self.caller, self.body, self.cid = g, caller, body, cid
        self.new_items, self.prompt_tokens = new_items, prompt_tokens
        self.rid, self.msg_id = new_id("resp"), new_id("msg")
        self.created = int(time.time())
        self.result: dict[str, Any] = {}
        self.hits = found.hits if found else []
        # output items before the message: the file_search_call of a retrieval
        self.calls = [call_item(found.query, found.hits, "file_search_call.results" in
                                (body.include or []))] if found else []

    def item(self, text: str, status: str) -> dict[str, Any]:
        notes = citations(self.hits, text) if status == "completed" else []
        return {"type": "message", "id": self.msg_id, "status": status, "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": notes}]}

    async def run(self, first: Delta, deltas: AsyncIterator[Delta]) -> AsyncIterator[str]:
        """Yields the text deltas; stores the finished response."""
        parts, last, completion = [], first, 0
        try:
            d = first
            while True:
                if d.text:
                    parts.append(d.text)
                    yield d.text
                if d.finish_reason is not None:
                    last = d
                    break
                d = await anext(deltas)
            completion = last.completion_tokens
        finally:
            await deltas.aclose()
            await self.g.record_usage(self.caller, self.body.model, "/responses",
                                      self.prompt_tokens, completion)
        status = "incomplete" if last.finish_reason == "length" else "completed"
        output = [*self.calls, self.item("".join(parts), "completed")]
        self.result = _response(self.body, self.rid, self.created, self.cid, status, output,
                                _usage(self.prompt_tokens, completion))
        await _store(self.g, self.body, self.result, self.cid, self.new_items)

    async def events(self, first: Delta, deltas: AsyncIterator[Delta]) -> AsyncIterator[str]:
        seq = 0

        def ev(kind: str, **fields) -> str:
            nonlocal seq
            seq += 1
            return sse.event({"type": kind, "sequence_number": seq - 1, **fields}, kind)

        started = _response(self.body, self.rid, self.created, self.cid, "in_progress", [],
                            None)
        yield ev("response.created", response=started)
        yield ev("response.in_progress", response=started)
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
            async for text in self.run(first, deltas):
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
        kind = "response.completed" if self.result["status"] == "completed" else \
            "response.incomplete"
        yield ev(kind, response=self.result)


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
