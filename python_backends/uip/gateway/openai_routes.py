"""`/v1/models`, `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`,
`/v1/images/generations` over Triton (or an external API, for text)."""

from __future__ import annotations

import asyncio
import base64
import io
import re
import time

import numpy as np
from fastapi import APIRouter, Depends

from uip.clients.tensors import grpc_input as tensor
from uip.core.paths import resolve_artifact
from uip.gateway import structured, textgen, tools
from uip.gateway.auth import authorize
from uip.gateway.errors import ApiError
from uip.gateway.llm import GenParams
from uip.gateway.retrieval import retrieve
from uip.gateway.routing import Target, external_json, first_available
from uip.gateway.schemas import (
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    ImageRequest,
    text_of,
)
from uip.gateway.state import Caller, Gateway, gateway
from uip.llm.lora_names import available

router = APIRouter(prefix="/v1")


def _model(model_id: str, owner: str) -> dict:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": owner}


@router.get("/models")
async def list_models(caller: Caller = Depends(authorize), g: Gateway = Depends(gateway)):
    """Triton models that are READY, aliases of them, and external models."""
    ready = await g.triton.ready_models(g.spec.triton)
    data = [_model(m, "uip") for m in g.spec.triton if m in ready]
    for m, model in g.spec.triton.items():  # LoRA adapters: '<model>:<adapter>'
        if m in ready and model.lora_dir:
            data += [_model(f"{m}:{a}", "uip") for a in available(resolve_artifact(model.lora_dir))]
    for name, route in g.spec.models.items():
        if route.external is not None:
            data.append(_model(name, "external"))
        elif route.triton in ready:
            data.append(_model(name, "uip"))
    return {"object": "list", "data": data}


@router.get("/models/{model_id}")
async def get_model(model_id: str, caller: Caller = Depends(authorize),
                    g: Gateway = Depends(gateway)):
    listed = await list_models(caller, g)
    for m in listed["data"]:
        if m["id"] == model_id:
            return m
    raise ApiError(404, f"The model {model_id!r} does not exist", "model", "model_not_found")


def _messages(body: ChatRequest, limit: int) -> list[dict[str, str]]:
    """The chat as the template sees it: earlier tool calls written in the call format,
    tool results as role `tool` messages."""
    if len(body.messages) > limit:
        raise ApiError(400, f"at most {limit} messages (limits.max_messages)", "messages")
    out = []
    for m in body.messages:
        text = text_of(m.content) + "".join(
            tools.call_text(c.function.name, c.function.arguments) for c in m.tool_calls or [])
        out.append({"role": "system" if m.role == "developer" else m.role, "content": text})
    return out


def _tool_plan(body: ChatRequest) -> tools.ToolPlan | None:
    functions = []
    for i, spec in enumerate(body.tools or []):
        if spec.get("type") != "function":
            raise ApiError(400, f"tools[{i}]: only function tools are supported in chat "
                           "completions (server-side tools run in /v1/responses)",
                           f"tools[{i}].type")
        functions.append(tools.function_of(spec, f"tools[{i}]"))
    return tools.plan(functions, body.tool_choice, body.parallel_tool_calls)


@router.post("/chat/completions")
async def chat_completions(body: ChatRequest, caller: Caller = Depends(authorize),
                           g: Gateway = Depends(gateway)):
    targets = g.router.targets(body.model, "llm")
    param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    params = GenParams.of(body, body.max_completion_tokens or body.max_tokens, g.spec.limits,
                          param)
    messages = _messages(body, g.spec.limits.max_messages)
    hits = []
    if body.file_search is not None:  # retrieval first: the prompt holds what it found
        found = await retrieve(g, body.file_search, messages)
        messages, hits = found.messages, found.hits
    forwarded = body.model_dump(exclude_none=True)
    if forwarded.pop("file_search", None) is not None:  # an external API gets the augmented
        forwarded["messages"] = messages  # messages, not our extra field
    params.guide = structured.chat_guide(body.response_format)
    plan = _tool_plan(body)
    if plan is not None and plan.active:
        if params.guide is not None:
            raise ApiError(400, "response_format cannot be combined with tools unless "
                           "tool_choice is none", "response_format")
        params.guide = plan.guide()
        messages = plan.prompt_messages(messages)
    job = textgen.TextJob(
        "chat", body.model, messages, None, params, forwarded, bool(body.stream),
        bool(body.stream_options and body.stream_options.include_usage), hits=hits,
        tools=plan if plan is not None and plan.active else None)
    return await textgen.run(g, caller, targets, job)


@router.post("/completions")
async def completions(body: CompletionRequest, caller: Caller = Depends(authorize),
                      g: Gateway = Depends(gateway)):
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) != 1:
        raise ApiError(400, "send exactly one prompt", "prompt")
    prompt = prompts[0]
    targets = g.router.targets(body.model, "llm")
    params = GenParams.of(body, body.max_tokens, g.spec.limits)
    job = textgen.TextJob(
        "completion", body.model, None, prompt, params,
        body.model_dump(exclude_none=True), bool(body.stream),
        bool(body.stream_options and body.stream_options.include_usage),
        echo=prompt if body.echo else "")
    return await textgen.run(g, caller, targets, job)


@router.post("/embeddings")
async def embeddings(body: EmbeddingRequest, caller: Caller = Depends(authorize),
                     g: Gateway = Depends(gateway)):
    texts = [body.input] if isinstance(body.input, str) else body.input
    limit = g.spec.limits.max_embedding_inputs
    if not texts or len(texts) > limit:
        raise ApiError(400, f"input must hold 1 to {limit} texts (limits.max_embedding_inputs)",
                       "input")
    targets = g.router.targets(body.model, "embedding")
    await g.limiter.admit(caller)

    async def attempt(target: Target):
        if target.external is not None:
            return await external_json(g.http, target, "/embeddings",
                                       body.model_dump(exclude_none=True))
        timeout = g.spec.limits.stream_timeout_s
        results = await asyncio.gather(*[
            g.triton.infer(target.triton, [tensor("text_input", np.array([[t.encode()]],
                                                                       dtype=object))], timeout)
            for t in texts])
        return [r.as_numpy("embedding")[0] for r in results]

    got = await first_available(targets, attempt)
    if isinstance(got, dict):  # external
        got["model"] = body.model
        u = got.get("usage") or {}
        await g.record_usage(caller, body.model, "/embeddings", int(u.get("prompt_tokens") or 0))
        return got
    if body.dimensions is not None and body.dimensions != got[0].shape[-1]:
        raise ApiError(400, f"{body.model} gives {got[0].shape[-1]} dimensions", "dimensions")
    tokens = _embedding_tokens(g, targets[0], texts)
    data = [{"object": "embedding", "index": i,
             "embedding": _encode(v.astype(np.float32), body.encoding_format)}
            for i, v in enumerate(got)]
    await g.record_usage(caller, body.model, "/embeddings", tokens)
    return {"object": "list", "data": data, "model": body.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _encode(vector: np.ndarray, fmt: str):
    if fmt == "base64":  # little-endian float32, as OpenAI sends it
        return base64.b64encode(vector.astype("<f4").tobytes()).decode()
    return vector.tolist()


def _embedding_tokens(g: Gateway, target: Target, texts: list[str]) -> int:
    name = g.spec.triton.get(target.triton or "")
    if name is None or name.tokenizer is None:
        return 0
    from uip.gateway.chat_template import tokenizer_for

    tok = tokenizer_for(name.tokenizer)
    return sum(len(tok.encode(t)) for t in texts)


_SIZE = re.compile(r"^(\d+)x(\d+)$")


@router.post("/images/generations")
async def images(body: ImageRequest, caller: Caller = Depends(authorize),
                 g: Gateway = Depends(gateway)):
    lim = g.spec.limits
    if body.response_format == "url":
        raise ApiError(400, "only response_format b64_json is supported", "response_format")
    width = height = None
    if body.size and body.size != "auto":
        m = _SIZE.match(body.size)
        assert m is not None  # the schema's pattern
        width, height = int(m.group(1)), int(m.group(2))
        if not (8 <= width <= lim.max_image_side and 8 <= height <= lim.max_image_side):
            raise ApiError(400, f"size sides must be 8 to {lim.max_image_side} "
                           "(limits.max_image_side)", "size")
    if body.steps is not None and body.steps > lim.max_image_steps:
        raise ApiError(400, f"steps must be <= {lim.max_image_steps} (limits.max_image_steps)",
                       "steps")
    n = body.n or 1
    if n > lim.max_images:
        raise ApiError(400, f"n must be <= {lim.max_images} (limits.max_images)", "n")
    targets = [t for t in g.router.targets(body.model, "image") if t.triton]
    await g.limiter.admit(caller)
    options = {"negative_prompt": body.negative_prompt,
               "steps": body.steps or lim.default_image_steps,
               "guidance_scale": body.guidance_scale, "height": height, "width": width,
               "scheduler": body.scheduler}

    async def attempt(target: Target):
        return await asyncio.gather(*[
            _image(g, target.triton, body.prompt,
                   seed=None if body.seed is None else body.seed + i, **options)
            for i in range(n)])

    pngs = await first_available(targets, attempt)
    await g.record_usage(caller, body.model, "/images/generations", images=n)
    return {"created": int(time.time()),
            "data": [{"b64_json": base64.b64encode(p).decode()} for p in pngs]}


async def _image(g: Gateway, model: str, prompt: str, **options) -> bytes:
    import tritonclient.grpc as grpcclient
    from PIL import Image

    from uip.clients.sd import infer_inputs

    inputs = infer_inputs(grpcclient, prompt, **options)
    result = await g.triton.infer(model, inputs, g.spec.limits.stream_timeout_s)
    image = result.as_numpy("image")[0]
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()
