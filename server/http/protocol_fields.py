"""What the TGI-shaped and the OpenAI-shaped request bodies share: the ranges of sampling fields, text that must be
valid Unicode, and the step from request values to SamplingParams."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, ConfigDict

from server.engine.errors import RequestValidationError
from server.engine.request import SamplingParams

# Python's json reads NaN and Infinity; no float field means anything with them.
FINITE_FLOATS = ConfigDict(allow_inf_nan=False)
MAX_SEED = 2**63 - 1  # a signed 64-bit integer, as TGI and vLLM take it; torch.Generator takes it too
MAX_TEMPERATURE = 100.0  # already uniform over the plausible tokens; below SAMPLING_EPS sampling is greedy
MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY = 0.01, 100.0  # outside this the logits only overflow
MAX_OPENAI_PENALTY = 2.0  # presence_penalty and frequency_penalty: OpenAI's range is [-2, 2]


def _require_valid_unicode(text: str) -> str:
    # JSON's "\ud800" escape reaches us as a lone surrogate: no tokenizer takes it and no response can echo it.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"is not valid Unicode: a lone surrogate at character {exc.start}") from None
    return text


Text = Annotated[str, AfterValidator(_require_valid_unicode)]


def build_sampling(**values) -> SamplingParams:
    """SamplingParams from request values (None: the default); its own checks become 4xx validation errors."""
    try:
        return SamplingParams(**{name: value for name, value in values.items() if value is not None})
    except ValueError as exc:
        raise RequestValidationError(str(exc)) from None
