"""`specs/gateway.yaml`: which model ids the gateway offers and where each one goes.

Triton models are listed by what they serve (`kind`); an llm with `lora_dir` is also offered
as `<model>:<adapter>` for each adapter folder there (its engine loads it); `models` adds ids
that alias a Triton model or an external OpenAI-compatible API (key from an environment
variable), each with fallbacks tried in order when its target is unavailable. `limits` caps
every request. `tools` declares server-side HTTP tools that `/v1/responses` runs in its agent
loop (`{"type": "http", "name": ...}` in a request's tools), within `agent`'s limits: at most
`max_iterations` model turns per response, only hosts in `allowed_hosts`, `timeout_s`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from uip.core.paths import DEFAULT_SPECS

DEFAULT_GATEWAY_SPEC = DEFAULT_SPECS / "gateway.yaml"
Kind = Literal["llm", "embedding", "image"]


class GatewaySpecError(ValueError):
    """An unusable gateway spec; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TritonModel(_Strict):
    kind: Kind
    tokenizer: str | None = Field(None, description="artifact folder of an llm's tokenizer "
                                  "(chat template, prompt token counts)")
    lora_dir: str | None = Field(None, description="an llm's LoRA adapter directory (its "
                                 "engine's lora_dir): each adapter is offered as "
                                 "'<model>:<adapter>'")

    @model_validator(mode="after")
    def _llm_has_tokenizer(self) -> TritonModel:
        if self.kind == "llm" and not self.tokenizer:
            raise ValueError("an llm needs 'tokenizer' (the artifact folder with its chat "
                             "template)")
        return self


class External(_Strict):
    base_url: str = Field(pattern=r"^https?://")
    api_key_env: str | None = Field(None, description="environment variable holding the key")
    model: str | None = Field(None, description="model id there (default: the same id)")
    timeout_s: float = Field(120.0, gt=0)


class Route(_Strict):
    triton: str | None = None
    external: External | None = None
    kind: Kind | None = Field(None, description="what an external model serves (default llm)")
    fallbacks: list[str] = []

    @model_validator(mode="after")
    def _one_target(self) -> Route:
        if (self.triton is None) == (self.external is None):
            raise ValueError("give exactly one of 'triton' or 'external'")
        return self


class Limits(_Strict):
    max_body_bytes: int = Field(4 << 20, ge=1024)
    max_messages: int = Field(256, ge=1)
    max_tokens: int = Field(1024, ge=1)  # per generation; the model's own limit also applies
    default_max_tokens: int | None = Field(None, ge=1)  # when a request gives none (None:
    # the model's own default)
    max_stop: int = Field(4, ge=0)
    max_choices: int = Field(8, ge=1)  # n of one chat / completions request
    max_embedding_inputs: int = Field(256, ge=1)
    max_image_side: int = Field(1024, ge=8)
    max_image_steps: int = Field(100, ge=1)
    default_image_steps: int | None = Field(None, ge=1)  # None: the model's own default
    max_images: int = Field(4, ge=1)  # n of one images request
    stream_timeout_s: float = Field(300.0, gt=0)
    max_context_items: int = Field(1000, ge=1)  # conversation items / chained turns read back
    max_list_items: int = Field(100, ge=1)  # page size cap of item lists


DEFAULT_RAG_TEMPLATE = (
    "Answer the question from the sources below; say so when they do not hold the answer.\n"
    "{sources}\n\nQuestion: {question}")


class Rag(_Strict):
    """Files, vector stores and retrieval (`file_search`)."""

    embedding_model: str = "embedding"  # a Triton model of kind embedding
    tokenizer: str = "embedding"  # artifact whose tokenizer counts chunk tokens
    chunk_tokens: int = Field(200, ge=16, le=4096)  # default max_chunk_size_tokens; the
    # embedding model reads at most 256 tokens (its limits.max_seq_length)
    chunk_overlap_tokens: int = Field(50, ge=0)  # default chunk_overlap_tokens
    embed_batch: int = Field(32, ge=1, le=64)  # texts per request to the embedding model
    max_file_bytes: int = Field(32 << 20, ge=1)  # larger uploads get 413
    max_chunks_per_file: int = Field(100_000, ge=1)
    max_num_results: int = Field(50, ge=1)  # the largest max_num_results of a search
    default_num_results: int = Field(10, ge=1)
    max_vector_store_ids: int = Field(8, ge=1)  # stores one search may span
    prompt_template: str = DEFAULT_RAG_TEMPLATE  # {sources} and {question}
    source_template: str = "[{n}] {filename}: {text}"  # one retrieved chunk in {sources}

    @model_validator(mode="after")
    def _overlap(self) -> Rag:
        if self.chunk_overlap_tokens * 2 > self.chunk_tokens:
            raise ValueError("chunk_overlap_tokens must be at most half of chunk_tokens")
        for name in ("{sources}", "{question}"):
            if name not in self.prompt_template:
                raise ValueError(f"prompt_template needs {name}")
        return self


class HttpTool(_Strict):
    """A server-side tool: the model's arguments are POSTed as JSON to `url`; the answer's
    body (text) is the tool's output."""

    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object",
                                                                "properties": {}})
    url: str = Field(pattern=r"^https?://")
    timeout_s: float | None = Field(None, gt=0)  # None: agent.tool_timeout_s


class Agent(_Strict):
    max_iterations: int = Field(8, ge=1, le=64)  # model turns per response (calls + answer)
    allowed_hosts: list[str] = ["127.0.0.1", "localhost"]  # HTTP tools reach only these
    tool_timeout_s: float = Field(30.0, gt=0)
    max_tool_output_bytes: int = Field(16384, ge=1)  # longer tool answers are cut


def host_of(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


class GatewaySpec(_Strict):
    triton: dict[str, TritonModel] = {}
    models: dict[str, Route] = {}
    limits: Limits = Limits()
    rag: Rag = Rag()
    tools: dict[str, HttpTool] = {}
    agent: Agent = Agent()

    @model_validator(mode="after")
    def _check_routes(self) -> GatewaySpec:
        known = set(self.triton) | set(self.models)
        for name, route in self.models.items():
            if name in self.triton:
                raise ValueError(f"models.{name}: the id is already a Triton model in 'triton'")
            if route.triton is not None and route.triton not in self.triton:
                raise ValueError(f"models.{name}.triton: {route.triton!r} is not listed under "
                                 f"'triton' (known: {sorted(self.triton)})")
            for fb in route.fallbacks:
                if fb not in known:
                    raise ValueError(f"models.{name}.fallbacks: unknown model id {fb!r}")
        for name in self.models:
            self.chain(name)  # raises on a cycle
        allowed = {h.lower() for h in self.agent.allowed_hosts}
        for name, tool in self.tools.items():
            if host_of(tool.url) not in allowed:
                raise ValueError(f"tools.{name}.url: host {host_of(tool.url)!r} is not in "
                                 f"agent.allowed_hosts {sorted(allowed)}")
        return self

    def kind_of(self, model_id: str) -> Kind | None:
        if model_id in self.triton:
            return self.triton[model_id].kind
        route = self.models.get(model_id)
        if route is None:
            return None
        if route.triton is not None:
            return self.triton[route.triton].kind
        return route.kind or "llm"

    def chain(self, model_id: str, seen: tuple[str, ...] = ()) -> list[str]:
        """`model_id` then its fallbacks (depth first), each id once."""
        if model_id in seen:
            raise ValueError(f"models.{model_id}.fallbacks: cycle {' -> '.join(seen)}")
        out = [model_id]
        route = self.models.get(model_id)
        for fb in route.fallbacks if route else []:
            out += [m for m in self.chain(fb, (*seen, model_id)) if m not in out]
        return out


def load_gateway_spec(path: Path | None = None) -> GatewaySpec:
    path = Path(path or DEFAULT_GATEWAY_SPEC)
    if not path.is_file():
        raise GatewaySpecError(f"{path}: gateway spec not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
        return GatewaySpec.model_validate(data)
    except yaml.YAMLError as e:
        raise GatewaySpecError(f"{path}: not valid YAML: {e}") from None
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise GatewaySpecError(f"{path}: {where}: {first['msg']}") from None
