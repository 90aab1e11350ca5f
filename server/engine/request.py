"""What crosses between the engine and its callers: a request in, a stream of outputs back."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from prompt_store.access import ANONYMOUS, Caller
from server.engine.histogram import Histogram

SAMPLING_EPS = 1e-5  # temperatures below this sample greedily
MAX_LOGPROBS = 20  # alternatives per token a request may ask for (OpenAI's chat allows 20, completions 5)
MAX_LOGIT_BIAS = 100.0  # OpenAI's range for a logit_bias value: [-100, 100]


class FinishReason(str, enum.Enum):
    LENGTH = "length"  # max_new_tokens reached (or the model's length limit)
    EOS = "eos_token"  # the model produced an end-of-sequence token
    STOP = "stop_sequence"  # a stop string appeared; the text ends before it
    ABORTED = "aborted"  # cancelled by the caller (client gone, deadline, shutdown)
    ERROR = "error"  # the engine could not serve it (its step failed, its prompt file is damaged): see `error`
    CLASSIFIED = "classified"  # a classification request's input was scored: see `classification`


@dataclass(frozen=True)
class ResponseFormat:
    """Constrained decoding: every token the request generates keeps its text a prefix of a valid JSON document."""

    kind: str  # "json_object": any JSON object; "json_schema": an instance of `json_schema`
    json_schema: str | None = None  # the schema as JSON text, with kind "json_schema"

    def __post_init__(self) -> None:
        if self.kind not in ("json_object", "json_schema"):
            raise ValueError(f"response_format type must be json_object or json_schema, not {self.kind!r}")
        if (self.kind == "json_schema") != (self.json_schema is not None):
            raise ValueError("response_format json_schema takes a schema, json_object none")


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 64
    do_sample: bool = False  # greedy unless true
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0  # 1.0: no nucleus filter
    repetition_penalty: float = 1.0  # 1.0: off; HF semantics (divide positive logits, multiply negative)
    seed: int | None = None  # same seed, same request -> same output
    stop: tuple[str, ...] = ()  # at most 4 strings; the output ends before the first one found
    ignore_eos: bool = False  # benchmarks: generate exactly max_new_tokens
    presence_penalty: float = 0.0  # OpenAI: subtracted from the logit of every token generated so far
    frequency_penalty: float = 0.0  # OpenAI: subtracted once per time a token was generated so far
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, value added to its logit), OpenAI's rule
    min_tokens: int = 0  # neither an EOS token nor a stop token id is generated before this many tokens
    stop_token_ids: tuple[int, ...] = ()  # generation ends on one of these (as on EOS: its text is not produced)
    logprobs: int | None = None  # None: none; k: each generated token's logprob and its k best alternatives
    prompt_logprobs: int | None = None  # None: none; k: each prompt token's logprob (but the first's) and k best
    response_format: ResponseFormat | None = None  # None: free text

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if not all(math.isfinite(value) for value in (self.temperature, self.top_p, self.repetition_penalty)):
            raise ValueError("temperature, top_p and repetition_penalty must be finite numbers")
        if self.do_sample and self.temperature <= 0:
            raise ValueError("temperature must be > 0 when sampling")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be > 0")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise ValueError("seed must be in [0, 2**63)")  # a signed 64-bit integer, which torch.Generator takes
        if len(self.stop) > 4 or any(not s for s in self.stop):
            raise ValueError("stop takes at most 4 non-empty strings")
        if not all(math.isfinite(v) for v in (self.presence_penalty, self.frequency_penalty)):
            raise ValueError("presence_penalty and frequency_penalty must be finite numbers")
        if any(not (math.isfinite(bias) and abs(bias) <= MAX_LOGIT_BIAS) for _, bias in self.logit_bias):
            raise ValueError(f"logit_bias values must be in [-{MAX_LOGIT_BIAS:g}, {MAX_LOGIT_BIAS:g}]")
        if self.min_tokens < 0 or self.min_tokens > self.max_new_tokens:
            raise ValueError("min_tokens must be in [0, max_new_tokens]")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= MAX_LOGPROBS:
                raise ValueError(f"{name} must be in [0, {MAX_LOGPROBS}]")

    @property
    def is_greedy(self) -> bool:
        """Greedy also below SAMPLING_EPS, as vLLM does: dividing logits by such a temperature overflows."""
        return not self.do_sample or self.temperature < SAMPLING_EPS


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str  # unique among live requests
    prompt_token_ids: tuple[int, ...]  # the tokenizer's output for the input text (BOS included if it adds one)
    sampling: SamplingParams
    task: str | None = None  # None: the base model, no soft prompt
    subtask: int = 0  # multitask prompt tuning: which sub-task's prompt; 0 for every other type
    caller: Caller = ANONYMOUS  # whose request: which tasks it may use, and its fair-scheduling class and weight
    task_version: int | None = None  # NAME@N: this kept version; None: the active one
    group: str | None = None  # the n samples of one prompt share it: later ones wait for the first's prompt blocks
    classify: bool = False  # score the prompt with the task's classification head instead of generating


@dataclass(frozen=True)
class Classification:
    """What a classification task's head gives for one input: logits = final hidden state @ weight.T + bias."""

    labels: tuple[str, ...]  # the head's, one per logit
    logits: tuple[tuple[float, ...], ...]  # one row for a sequence task; one per input token for a token task
    per_token: bool


@dataclass(frozen=True)
class TokenLogprob:
    """A token's log-probability under the distribution it was chosen from, and the best alternatives there."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (token id, logprob) of the k most likely tokens, most likely first


@dataclass(frozen=True)
class RequestOutput:
    """One step's news for one request; the last one has `finished` set."""

    request_id: str
    new_token_ids: tuple[int, ...]  # tokens produced since the previous output
    new_text: str  # text those tokens completed (held back while it may still become a stop string)
    finished: bool
    finish_reason: FinishReason | None  # set when finished
    num_prompt_tokens: int  # the request's own prompt tokens (virtual tokens not counted)
    num_generated_tokens: int  # tokens generated so far, the ones cut by a stop string included
    task: str | None
    task_version: int | None
    timings: RequestTimings | None = None  # set on the last output
    error: str | None = None  # with FinishReason.ERROR: what went wrong, safe to show the client
    new_logprobs: tuple[TokenLogprob, ...] = ()  # with sampling.logprobs: one per new token id, in order
    # With sampling.prompt_logprobs, on the output that carries the first generated token: one per prompt token,
    # None for the first (nothing before it in the request's own text predicts it).
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None
    classification: Classification | None = None  # with FinishReason.CLASSIFIED, on the last output


@dataclass(frozen=True)
class RequestTimings:
    arrival_time: float  # time.monotonic() when the engine received it
    first_scheduled_time: float | None
    first_token_time: float | None
    finished_time: float


@dataclass(frozen=True)
class EngineStats:
    """A snapshot for metrics and health, taken by the engine thread at the end of each step: reading it from
    another thread never touches state the engine is changing."""

    num_running: int
    num_waiting: int
    num_free_blocks: int
    num_total_blocks: int
    num_registry_blocks: int  # blocks holding task prefixes
    num_resident_tasks: int  # task versions with device-resident prompts
    num_steps: int  # steps that ran a batch
    batch_sizes: Histogram  # sequences per step, since start-up
    num_step_failures: int = 0  # steps whose run or sample raised (only the requests at fault failed)
    num_prefix_cache_queried_tokens: int = 0  # tokens admitted sequences needed in the cache, since start-up
    num_prefix_cache_hit_tokens: int = 0  # of those, found in the prefix cache

    @property
    def kv_cache_usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_total_blocks
