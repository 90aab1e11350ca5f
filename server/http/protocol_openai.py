"""Request and response bodies of the OpenAI-compatible routes; unknown request fields are ignored, fields the server
cannot honour are refused naming them."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field

from server.engine.errors import RequestValidationError
from server.engine.request import MAX_LOGPROBS, FinishReason, RequestOutput, ResponseFormat, SamplingParams
from server.http.protocol_fields import (
    FINITE_FLOATS,
    MAX_REPETITION_PENALTY,
    MAX_SEED,
    MAX_TEMPERATURE,
    MAX_TOKEN_IDS,
    MIN_REPETITION_PENALTY,
    LogitBias,
    Penalty,
    Text,
    TokenId,
    build_sampling,
    json_schema_format,
    logit_bias_of,
)

DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
MAX_COMPLETION_LOGPROBS = 5  # OpenAI's bound for the completions `logprobs`; chat's top_logprobs goes to MAX_LOGPROBS
MAX_SAMPLES = 8  # `n`

_FINISH_REASONS = {
    FinishReason.LENGTH: "length",
    FinishReason.EOS: "stop",
    FinishReason.STOP: "stop",
    FinishReason.ABORTED: "abort",
}


def finish_reason_of(output: RequestOutput) -> str | None:
    return _FINISH_REASONS[output.finish_reason] if output.finish_reason else None


def _unsupported(field: str, why: str) -> RequestValidationError:
    return RequestValidationError(f"{field} is not supported: {why}", param=field)


class StreamOptions(BaseModel):
    include_usage: bool = False


class JsonSchemaSpec(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    name: str | None = None
    description: str | None = None
    schema_: Any = Field(default=None, alias="schema")
    strict: bool | None = None  # the output always matches the schema, strict or not


class ResponseFormatField(BaseModel):
    type: str  # text | json_object | json_schema
    json_schema: JsonSchemaSpec | None = None

    def to_format(self) -> ResponseFormat | None:
        if self.type == "text":
            return None
        if self.type == "json_object":
            return ResponseFormat("json_object")
        if self.type == "json_schema":
            if self.json_schema is None or self.json_schema.schema_ is None:
                raise RequestValidationError("response_format json_schema needs json_schema.schema", "response_format")
            return json_schema_format(self.json_schema.schema_, "response_format")
        raise _unsupported("response_format", f"type {self.type!r} (text, json_object and json_schema are)")


class SamplingFields(BaseModel):
    """What completions and chat share; `top_k`, `repetition_penalty`, `ignore_eos`, `min_tokens` and
    `stop_token_ids` are vLLM's extensions."""

    model_config = FINITE_FLOATS

    model: str | None = None  # a task name or the base model id; None: the base model
    temperature: float | None = Field(default=None, ge=0, le=MAX_TEMPERATURE)  # 0: greedy; the default 1.0 samples
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: Text | list[Text] | None = None
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    n: int | None = Field(default=1, ge=1, le=MAX_SAMPLES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    top_k: int | None = Field(default=None, ge=0)
    repetition_penalty: float | None = Field(default=None, ge=MIN_REPETITION_PENALTY, le=MAX_REPETITION_PENALTY)
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, LogitBias] | None = Field(default=None, max_length=MAX_TOKEN_IDS)
    stop_token_ids: list[TokenId] | None = Field(default=None, max_length=MAX_TOKEN_IDS)
    min_tokens: int = Field(default=0, ge=0)
    response_format: ResponseFormatField | None = None
    ignore_eos: bool = False
    subtask: int = Field(default=0, ge=0)  # multitask prompt tuning: which sub-task's prompt (promptswap extension)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    @property
    def num_samples(self) -> int:
        return self.n or 1

    @property
    def num_logprobs(self) -> int | None:
        """Alternatives per generated token; None: no logprobs."""
        return None

    @property
    def num_prompt_logprobs(self) -> int | None:
        """Alternatives per prompt token; None: no prompt logprobs."""
        return None

    def to_sampling(self, max_new_tokens: int) -> SamplingParams:
        if self.min_tokens > max_new_tokens:
            raise RequestValidationError(
                f"min_tokens is {self.min_tokens}, more than the {max_new_tokens} tokens asked for", param="min_tokens"
            )
        temperature = 1.0 if self.temperature is None else self.temperature
        return build_sampling(
            max_new_tokens=max_new_tokens,
            do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else None,
            top_p=self.top_p,
            top_k=self.top_k,
            repetition_penalty=self.repetition_penalty,
            stop=self.stop_strings,
            seed=self.seed,
            ignore_eos=self.ignore_eos,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            logit_bias=logit_bias_of(self.logit_bias, "logit_bias"),
            min_tokens=self.min_tokens,
            stop_token_ids=tuple(self.stop_token_ids or ()),
            logprobs=self.num_logprobs,
            prompt_logprobs=self.num_prompt_logprobs,
            response_format=self.response_format.to_format() if self.response_format else None,
        )


class CompletionRequest(SamplingFields):
    prompt: Text | list[Text] | list[int] | list[list[int]]
    max_tokens: int | None = Field(default=None, ge=1)  # None: DEFAULT_COMPLETION_MAX_TOKENS, or what fits
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    suffix: str | None = None  # refused unless empty
    best_of: int | None = None  # refused unless null or n

    @property
    def num_logprobs(self) -> int | None:
        return self.logprobs

    @property
    def num_prompt_logprobs(self) -> int | None:
        return self.logprobs if self.echo else None

    def check_supported(self) -> None:
        if self.suffix:
            raise _unsupported("suffix", "text is only generated after the prompt")
        if self.best_of is not None and self.best_of != self.num_samples:
            raise _unsupported("best_of", "it must be null or equal to n (samples are not ranked)")

    def prompt_value(self) -> str | tuple[int, ...]:
        """The one prompt: text, or token ids; batches of prompts are refused."""
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise RequestValidationError("exactly one prompt per request is supported", param="prompt")
            prompt = prompt[0]
        # A list here holds token ids: a list of texts or of id lists was unwrapped above.
        return prompt if isinstance(prompt, str) else tuple(cast(list[int], prompt))


class ContentPart(BaseModel):
    type: str
    text: Text | None = None


class ChatMessage(BaseModel):
    role: Text
    content: Text | list[ContentPart] | None = None

    def to_template(self) -> dict:
        if isinstance(self.content, list):
            if any(part.type != "text" for part in self.content):
                raise RequestValidationError("only text content parts are supported", param="messages")
            return {"role": self.role, "content": "".join(part.text or "" for part in self.content)}
        return {"role": self.role, "content": self.content or ""}


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)  # the newer name of max_tokens
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    # Refused unless absent or empty: this server calls no tools and produces text only.
    tools: list[Any] | None = None
    tool_choice: Any = None  # "none" / "auto" pass: without tools both mean no tool call
    functions: list[Any] | None = None
    function_call: Any = None
    audio: Any = None
    modalities: list[str] | None = None
    prediction: Any = None
    web_search_options: Any = None

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def max_tokens_field(self) -> str:
        return "max_completion_tokens" if self.max_completion_tokens else "max_tokens"

    @property
    def num_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def check_supported(self) -> None:
        if self.top_logprobs and not self.logprobs:
            raise RequestValidationError("top_logprobs needs logprobs: true", param="top_logprobs")
        if self.tools:
            raise _unsupported("tools", "this server calls no tools")
        if self.functions:
            raise _unsupported("functions", "this server calls no functions")
        for field in ("tool_choice", "function_call"):
            if getattr(self, field) not in (None, "none", "auto"):
                raise _unsupported(field, "there are no tools to call")
        if self.modalities not in (None, ["text"]):
            raise _unsupported("modalities", "only text is produced")
        for field, why in (
            ("audio", "only text is produced"),
            ("prediction", "predicted outputs are not served"),
            ("web_search_options", "this server does not search the web"),
        ):
            if getattr(self, field) is not None:
                raise _unsupported(field, why)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, finals: Sequence[RequestOutput]) -> Usage:
        """The samples of one prompt: its tokens once, every sample's generated tokens."""
        num_prompt_tokens = finals[0].num_prompt_tokens
        num_generated_tokens = sum(final.num_generated_tokens for final in finals)
        return cls(
            prompt_tokens=num_prompt_tokens,
            completion_tokens=num_generated_tokens,
            total_tokens=num_prompt_tokens + num_generated_tokens,
        )


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy shape: one entry per token in each list."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)  # None: the prompt's first token
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)  # the best ones and the chosen one
    text_offset: list[int] = Field(default_factory=list)  # the running sum of the tokens' text lengths


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ChatTopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]  # the token's UTF-8 bytes (a byte-level token may hold part of a character)


class ChatTokenLogprob(ChatTopLogprob):
    top_logprobs: list[ChatTopLogprob]  # `top_logprobs` alternatives, most likely first


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob]
    refusal: None = None


class ChatMessageOut(BaseModel):
    role: str = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessageOut
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: dict[str, str]  # {"role", "content"} on the first chunk, {"content"} next, {} on the last
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "promptswap"
    root: str
    parent: str | None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
