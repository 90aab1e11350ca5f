"""Request and response bodies of the TGI-shaped `POST /v1/generate`."""

from __future__ import annotations

import json
from typing import Any, ClassVar

from pydantic import BaseModel, Field, model_serializer

from server.engine.errors import RequestValidationError
from server.engine.request import RequestOutput, ResponseFormat, SamplingParams
from server.http.protocol_fields import (
    FINITE_FLOATS,
    MAX_REPETITION_PENALTY,
    MAX_SEED,
    MAX_TEMPERATURE,
    MIN_REPETITION_PENALTY,
    Penalty,
    Text,
    build_sampling,
    json_schema_format,
)

MAX_TOP_N_TOKENS = 5  # TGI's default --max-top-n-tokens
_GRAMMAR = "parameters.grammar"


class Grammar(BaseModel):
    type: str  # json (value: a schema, or its JSON text) | json_schema (value: {"name", "schema"}) | regex (refused)
    value: Any = None

    def to_format(self) -> ResponseFormat:
        if self.type == "regex":
            raise RequestValidationError(f"{_GRAMMAR} type 'regex' is not supported; json is", param=_GRAMMAR)
        if self.type == "json":
            return json_schema_format(_parsed(self.value), _GRAMMAR)
        if self.type == "json_schema":
            schema = self.value.get("schema") if isinstance(self.value, dict) else None
            return json_schema_format(_parsed(schema), _GRAMMAR)
        raise RequestValidationError(f"{_GRAMMAR} type must be json or json_schema, not {self.type!r}", param=_GRAMMAR)


def _parsed(schema: Any) -> Any:
    """TGI takes a schema as an object or as its JSON text."""
    if not isinstance(schema, str):
        return schema
    try:
        return json.loads(schema)
    except ValueError:
        raise RequestValidationError(f"{_GRAMMAR} value is not valid JSON", param=_GRAMMAR) from None


class GenerateParameters(BaseModel):
    # TGI clients send every parameter, unset ones as null; null means "the default". Unknown fields are ignored.
    model_config = FINITE_FLOATS

    max_new_tokens: int | None = Field(default=None, ge=1)
    do_sample: bool | None = None
    temperature: float | None = Field(default=None, gt=0, le=MAX_TEMPERATURE)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    repetition_penalty: float | None = Field(default=None, ge=MIN_REPETITION_PENALTY, le=MAX_REPETITION_PENALTY)
    frequency_penalty: Penalty | None = None
    stop: list[Text] | None = Field(default=None, max_length=4)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    return_full_text: bool | None = None
    details: bool | None = None  # details.tokens: each generated token with its logprob
    decoder_input_details: bool | None = None  # details.prefill: each prompt token with its logprob
    top_n_tokens: int | None = Field(default=None, ge=0, le=MAX_TOP_N_TOKENS)  # details.top_tokens per step
    grammar: Grammar | None = None

    def to_sampling(self, max_new_tokens: int, is_stream: bool) -> SamplingParams:
        # A stream's tokens always carry their logprob, as TGI's do.
        wants_logprobs = is_stream or self.details or self.top_n_tokens
        return build_sampling(
            max_new_tokens=max_new_tokens,
            do_sample=bool(self.do_sample),
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            repetition_penalty=self.repetition_penalty,
            frequency_penalty=self.frequency_penalty,
            stop=tuple(self.stop or ()),
            seed=self.seed,
            logprobs=(self.top_n_tokens or 0) if wants_logprobs else None,
            prompt_logprobs=0 if self.decoder_input_details else None,
            response_format=self.grammar.to_format() if self.grammar else None,
        )


class GenerateRequest(BaseModel):
    inputs: Text
    parameters: GenerateParameters = Field(default_factory=GenerateParameters)
    stream: bool = False

    def check_supported(self) -> None:
        if self.stream and self.parameters.decoder_input_details:
            field = "parameters.decoder_input_details"
            raise RequestValidationError(f"{field} is not supported when streaming (as in TGI)", param=field)


class _LeavesOutUnasked(BaseModel):
    """The fields in `_unasked_when_none` are left out of the JSON when None, as TGI leaves out what was not asked."""

    _unasked_when_none: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _leave_out_unasked(self, handler) -> dict:
        data = handler(self)
        for name in self._unasked_when_none:
            if data.get(name) is None:
                data.pop(name, None)
        return data


class Token(BaseModel):
    id: int
    text: str
    logprob: float
    special: bool  # a special token (BOS, EOS, chat markers)


class PrefillToken(BaseModel):
    id: int
    text: str
    logprob: float | None  # None for the first prompt token: nothing before it predicts it


class GenerateDetails(_LeavesOutUnasked):
    _unasked_when_none = ("prefill", "tokens", "top_tokens")

    finish_reason: str  # length | eos_token | stop_sequence
    generated_tokens: int
    prompt_tokens: int  # the request's own tokens; virtual tokens are not counted
    task: str | None
    task_version: int | None
    prefill: list[PrefillToken] | None = None  # with decoder_input_details
    tokens: list[Token] | None = None  # with details
    top_tokens: list[list[Token]] | None = None  # with top_n_tokens > 0

    @classmethod
    def of(cls, final: RequestOutput) -> GenerateDetails:
        assert final.finish_reason is not None  # set on every finished output
        return cls(
            finish_reason=final.finish_reason.value,
            generated_tokens=final.num_generated_tokens,
            prompt_tokens=final.num_prompt_tokens,
            task=final.task,
            task_version=final.task_version,
        )


class GenerateResponse(BaseModel):
    generated_text: str
    details: GenerateDetails


class StreamToken(BaseModel):
    id: int
    text: str  # the text released with this token (see the route): may be "" while a stop string could still match
    logprob: float
    special: bool


class StreamEvent(_LeavesOutUnasked):
    _unasked_when_none = ("top_tokens",)

    token: StreamToken | None  # None only on a closing event that carries no token
    top_tokens: list[Token] | None = None  # with top_n_tokens > 0: this step's alternatives
    generated_text: str | None = None  # set on the last event
    details: GenerateDetails | None = None  # set on the last event
