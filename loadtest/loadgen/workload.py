"""What each request asks for: which task (a Zipf mix over tasks, plus some base-model requests), how long a
prompt, how many output tokens. Drawn once, up front, from a seed, so two runs send the same requests."""

from __future__ import annotations

import bisect
import itertools
import random
from dataclasses import dataclass

from loadtest.loadgen.lengths import LengthDistribution
from loadtest.loadgen.prompt_text import PromptText


@dataclass(frozen=True)
class RequestSpec:
    index: int  # position in the run, 0-based
    task: str | None  # None: the base model, no soft prompt
    prompt: str  # the text sent
    num_prompt_tokens: int  # the length drawn (exact with a tokenizer, else counted in words)
    max_tokens: int  # output tokens asked for


class ZipfTaskMix:
    """P(task of popularity rank k) ∝ 1 / k**exponent over N tasks; a `base_fraction` of requests use no task.

    Ranks are given to the tasks in a seeded random order, so when task names group by kind (prompt tuning,
    prefix tuning, ...) the popular tasks still mix kinds. exponent 0 is a uniform mix.
    """

    def __init__(self, tasks: list[str], exponent: float = 1.0, base_fraction: float = 0.0, seed: int = 0):
        if exponent < 0:
            raise ValueError(f"Zipf exponent must be >= 0, got {exponent}")
        if not 0 <= base_fraction <= 1:
            raise ValueError(f"base fraction must be in [0, 1], got {base_fraction}")
        if not tasks and base_fraction < 1:
            raise ValueError("no tasks to mix: give tasks, or a base fraction of 1")
        self.ranked_tasks = list(tasks)
        random.Random(seed).shuffle(self.ranked_tasks)
        self.exponent = exponent
        self.base_fraction = base_fraction
        weights = [1.0 / rank**exponent for rank in range(1, len(tasks) + 1)]
        total = sum(weights)
        self.task_probabilities = [weight / total for weight in weights]  # by rank
        self._cumulative = list(itertools.accumulate(self.task_probabilities))

    def sample(self, rng: random.Random) -> str | None:
        if rng.random() < self.base_fraction:
            return None
        rank = bisect.bisect_left(self._cumulative, rng.random() * self._cumulative[-1])
        return self.ranked_tasks[min(rank, len(self.ranked_tasks) - 1)]

    def probability(self, task: str | None) -> float:
        """The chance that one request uses `task` (None: the base model)."""
        if task is None:
            return self.base_fraction
        rank = self.ranked_tasks.index(task)
        return (1 - self.base_fraction) * self.task_probabilities[rank]


def build_requests(
    num_requests: int,
    mix: ZipfTaskMix,
    input_len: LengthDistribution,
    output_len: LengthDistribution,
    text: PromptText,
    seed: int = 0,
) -> list[RequestSpec]:
    rng = random.Random(seed)
    specs = []
    for index in range(num_requests):
        task = mix.sample(rng)
        num_prompt_tokens = input_len.sample(rng)
        max_tokens = output_len.sample(rng)
        specs.append(RequestSpec(index, task, text.make(num_prompt_tokens, rng), num_prompt_tokens, max_tokens))
    return specs
