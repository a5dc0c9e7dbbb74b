"""Request bodies of the OpenAI endpoints the gateway serves (pydantic: a wrong field is 400).

Unknown fields are ignored, as OpenAI-compatible servers commonly do; fields the gateway
cannot honour (n > 1, parallel tool calls) are refused by the handlers with the field named.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

UINT64_MAX = 2**64 - 1


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Body):
    type: Literal["text", "input_text", "output_text"]
    text: str


class FunctionCall(_Body):
    name: str = Field(min_length=1)
    arguments: str = ""


class ToolCall(_Body):
    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's earlier calls
    tool_call_id: str | None = None  # role tool: the call this result answers


class JsonSchemaFormat(_Body):
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Body):
    """Chat completions' `response_format`."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class TextFormat(_Body):
    """The Responses API's `text.format` (the json_schema fields sit beside `type`)."""

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class TextConfig(_Body):
    format: TextFormat | None = None


class StreamOptions(_Body):
    include_usage: bool = False


class Sampling(_Body):
    """What chat and completions share."""

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0, le=UINT64_MAX)
    stop: str | list[str] | None = None
    n: int | None = Field(None, ge=1, le=128)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None


class FileSearchOption(_Body):
    """Retrieval from vector stores: the Responses API's `file_search` tool, or the chat
    completions `file_search` extra body (same fields)."""

    type: Literal["file_search"] = "file_search"
    vector_store_ids: list[str] = Field(min_length=1)
    max_num_results: int | None = Field(None, ge=1)
    ranking_options: dict[str, Any] | None = None


class ChatRequest(Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    file_search: FileSearchOption | None = None  # not OpenAI's: retrieval via extra_body


class CompletionRequest(Sampling):
    prompt: str | list[str]
    echo: bool | None = False


class EmbeddingRequest(_Body):
    model: str = Field(min_length=1)
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None


class ImageRequest(_Body):
    model: str = "stable_diffusion"
    prompt: str = Field(min_length=1)
    n: int | None = Field(1, ge=1, le=10)
    size: str | None = Field(None, pattern=r"^(auto|\d{1,5}x\d{1,5})$")
    response_format: Literal["b64_json", "url"] | None = "b64_json"
    user: str | None = None
    # not in OpenAI's API: stable_diffusion's own inputs, sent via the SDK's extra_body
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    steps: int | None = Field(None, ge=1)
    negative_prompt: str | None = None
    guidance_scale: float | None = Field(None, ge=0, le=100)
    scheduler: Literal["ddim", "euler", "euler_a", "dpm++", "pndm", "lms"] | None = None


class InputMessage(_Body):
    type: Literal["message"] | None = "message"
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]


class FunctionCallItem(_Body):
    """A function call the model made (fed back as context on a later turn)."""

    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str = ""
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(_Body):
    """The client's result of a function call."""

    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str
    id: str | None = None
    status: str | None = None


InputItem = InputMessage | FunctionCallItem | FunctionCallOutputItem


class ConversationRef(_Body):
    id: str


class ResponseRequest(_Body):
    model: str = Field(min_length=1)
    input: str | list[InputItem]
    instructions: str | None = None
    store: bool | None = True
    previous_response_id: str | None = None
    conversation: str | ConversationRef | None = None
    stream: bool | None = False
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    metadata: dict[str, str] | None = None
    tools: list[dict[str, Any]] | None = None
    include: list[str] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None


class ConversationCreate(_Body):
    items: list[InputMessage] | None = Field(None, max_length=20)
    metadata: dict[str, str] | None = None


class ConversationUpdate(_Body):
    metadata: dict[str, str]


class ItemsCreate(_Body):
    items: list[InputMessage] = Field(min_length=1, max_length=20)


def text_of(content: str | list[TextPart] | None) -> str:
    """A message's text (content parts joined)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.text for p in content)
