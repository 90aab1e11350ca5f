"""Body and response of `POST /v1/classify`, as vLLM's classification API; unknown request fields are ignored."""

from __future__ import annotations

from pydantic import BaseModel, Field

from server.http.protocol_fields import Text

MAX_CLASSIFY_INPUTS = 64  # texts per request: each is its own engine request, admitted together


class ClassifyRequest(BaseModel):
    model: str  # a classification task, or NAME@N
    input: Text | list[Text] = Field(union_mode="left_to_right")
    subtask: int = Field(default=0, ge=0)  # multitask prompt tuning: which sub-task's prompt (promptswap extension)

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class ClassifiedToken(BaseModel):
    """A token task's label for one input token."""

    token: str  # the token's own text
    start: int  # its characters in the input: [start, end) (the tokenizer's offsets; 0, 0 for an added BOS)
    end: int
    label: str
    probs: list[float]


class ClassificationData(BaseModel):
    index: int
    label: str | None  # a sequence task's argmax label; None for a token task (each token has its own)
    probs: list[float] | None  # softmax of the head's logits; None for a token task
    num_classes: int
    tokens: list[ClassifiedToken] | None = None  # token tasks: one per input token


class ClassifyUsage(BaseModel):
    prompt_tokens: int  # the inputs' own tokens (a task's virtual tokens not counted, as in every usage)
    total_tokens: int


class ClassifyResponse(BaseModel):
    id: str
    object: str = "list"
    created: int
    model: str
    data: list[ClassificationData]
    usage: ClassifyUsage
