"""Request and response bodies of the OpenAI-compatible routes; unknown request fields are ignored."""

from __future__ import annotations

import time
from typing import Literal, cast

from pydantic import BaseModel, Field

from server.engine.errors import RequestValidationError
from server.engine.request import FinishReason, RequestOutput, SamplingParams
from server.http.protocol_fields import (
    FINITE_FLOATS,
    MAX_OPENAI_PENALTY,
    MAX_REPETITION_PENALTY,
    MAX_SEED,
    MAX_TEMPERATURE,
    MIN_REPETITION_PENALTY,
    Text,
    build_sampling,
)

DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions

_FINISH_REASONS = {
    FinishReason.LENGTH: "length",
    FinishReason.EOS: "stop",
    FinishReason.STOP: "stop",
    FinishReason.ABORTED: "abort",
}


def finish_reason_of(output: RequestOutput) -> str | None:
    return _FINISH_REASONS[output.finish_reason] if output.finish_reason else None


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingFields(BaseModel):
    """What completions and chat share; `top_k`, `repetition_penalty` and `ignore_eos` are vLLM's extensions."""

    model_config = FINITE_FLOATS

    model: str | None = None  # a task name or the base model id; None: the base model
    temperature: float | None = Field(default=None, ge=0, le=MAX_TEMPERATURE)  # 0: greedy; the default 1.0 samples
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: Text | list[Text] | None = None
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    n: int | None = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    top_k: int | None = Field(default=None, ge=0)
    repetition_penalty: float | None = Field(default=None, ge=MIN_REPETITION_PENALTY, le=MAX_REPETITION_PENALTY)
    # Range-checked as OpenAI does, not applied yet (as before, when they were ignored as unknown fields).
    presence_penalty: float | None = Field(default=None, ge=-MAX_OPENAI_PENALTY, le=MAX_OPENAI_PENALTY)
    frequency_penalty: float | None = Field(default=None, ge=-MAX_OPENAI_PENALTY, le=MAX_OPENAI_PENALTY)
    ignore_eos: bool = False
    subtask: int = Field(default=0, ge=0)  # multitask prompt tuning: which sub-task's prompt (promptswap extension)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    def to_sampling(self, max_new_tokens: int) -> SamplingParams:
        if self.n not in (None, 1):
            raise RequestValidationError("only n=1 is supported", param="n")
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
        )


class CompletionRequest(SamplingFields):
    prompt: Text | list[Text] | list[int] | list[list[int]]
    max_tokens: int | None = Field(default=None, ge=1)  # None: DEFAULT_COMPLETION_MAX_TOKENS, or what fits
    echo: bool = False

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

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def max_tokens_field(self) -> str:
        return "max_completion_tokens" if self.max_completion_tokens else "max_tokens"


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, final: RequestOutput) -> Usage:
        return cls(
            prompt_tokens=final.num_prompt_tokens,
            completion_tokens=final.num_generated_tokens,
            total_tokens=final.num_prompt_tokens + final.num_generated_tokens,
        )


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: str | None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ChatMessageOut(BaseModel):
    role: str = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessageOut
    logprobs: None = None
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
    logprobs: None = None
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
