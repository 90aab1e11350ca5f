"""What the TGI-shaped and the OpenAI-shaped request bodies share: the ranges of sampling fields, text that must be
valid Unicode, logit_bias and JSON-schema fields, and the step from request values to SamplingParams."""

from __future__ import annotations

import json
import re
from typing import Annotated

from pydantic import AfterValidator, ConfigDict, Field

from server.engine.errors import RequestValidationError
from server.engine.request import MAX_LOGIT_BIAS, ResponseFormat, SamplingParams

# Python's json reads NaN and Infinity; no float field means anything with them.
FINITE_FLOATS = ConfigDict(allow_inf_nan=False)
MAX_SEED = 2**63 - 1  # a signed 64-bit integer, as TGI and vLLM take it; torch.Generator takes it too
MAX_TEMPERATURE = 100.0  # already uniform over the plausible tokens; below SAMPLING_EPS sampling is greedy
MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY = 0.01, 100.0  # outside this the logits only overflow
MAX_OPENAI_PENALTY = 2.0  # presence_penalty and frequency_penalty: OpenAI's range is [-2, 2]
MAX_TOKEN_IDS = 1024  # entries in logit_bias or stop_token_ids: the engine applies each one at every step
_TOKEN_ID_KEY = re.compile(r"[0-9]+")

Penalty = Annotated[float, Field(ge=-MAX_OPENAI_PENALTY, le=MAX_OPENAI_PENALTY)]
LogitBias = Annotated[float, Field(ge=-MAX_LOGIT_BIAS, le=MAX_LOGIT_BIAS)]
TokenId = Annotated[int, Field(ge=0)]


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


def logit_bias_of(logit_bias: dict[str, float] | None, field: str) -> tuple[tuple[int, float], ...]:
    """OpenAI's `logit_bias`: token ids, as JSON object keys (strings), to a bias. Whether each id is in the
    vocabulary is the engine's check."""
    entries = []
    for key, bias in (logit_bias or {}).items():
        if not _TOKEN_ID_KEY.fullmatch(key):
            raise RequestValidationError(f"{field} keys must be token ids, got {key!r}", param=field)
        entries.append((int(key), bias))
    return tuple(entries)


def json_schema_format(schema: object, field: str) -> ResponseFormat:
    """Constrained decoding to `schema` (a JSON Schema: an object, or true / false)."""
    if not isinstance(schema, (dict, bool)):
        raise RequestValidationError(f"{field} must be a JSON schema object", param=field)
    return ResponseFormat("json_schema", json.dumps(schema))
