"""Request and response bodies of the TGI-shaped `POST /v1/generate`."""

from __future__ import annotations

from pydantic import BaseModel, Field

from server.engine.request import RequestOutput, SamplingParams
from server.http.protocol_fields import (
    FINITE_FLOATS,
    MAX_REPETITION_PENALTY,
    MAX_SEED,
    MAX_TEMPERATURE,
    MIN_REPETITION_PENALTY,
    Text,
    build_sampling,
)


class GenerateParameters(BaseModel):
    # TGI clients send every parameter, unset ones as null; null means "the default". Unknown fields are ignored.
    model_config = FINITE_FLOATS

    max_new_tokens: int | None = Field(default=None, ge=1)
    do_sample: bool | None = None
    temperature: float | None = Field(default=None, gt=0, le=MAX_TEMPERATURE)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    repetition_penalty: float | None = Field(default=None, ge=MIN_REPETITION_PENALTY, le=MAX_REPETITION_PENALTY)
    stop: list[Text] | None = Field(default=None, max_length=4)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    return_full_text: bool | None = None

    def to_sampling(self, max_new_tokens: int) -> SamplingParams:
        return build_sampling(
            max_new_tokens=max_new_tokens,
            do_sample=bool(self.do_sample),
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            repetition_penalty=self.repetition_penalty,
            stop=tuple(self.stop or ()),
            seed=self.seed,
        )


class GenerateRequest(BaseModel):
    inputs: Text
    parameters: GenerateParameters = Field(default_factory=GenerateParameters)
    stream: bool = False


class GenerateDetails(BaseModel):
    finish_reason: str  # length | eos_token | stop_sequence
    generated_tokens: int
    prompt_tokens: int  # the request's own tokens; virtual tokens are not counted
    task: str | None
    task_version: int | None

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
    text: str


class StreamEvent(BaseModel):
    token: StreamToken | None  # None only on a closing event that carries no token
    generated_text: str | None = None  # set on the last event
    details: GenerateDetails | None = None  # set on the last event
