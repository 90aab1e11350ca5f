"""The requests every arm serves: chat-formatted questions, each tied to a task by a Zipf mix."""

from __future__ import annotations

import random
from dataclasses import dataclass

from loadtest.adapters import RandomAdapter
from loadtest.loadgen.workload import ZipfTaskMix

QUESTIONS = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers.",
    "Explain photosynthesis in one sentence.",
    "Translate 'good morning' to Spanish.",
    "What is 12 times 7?",
    "Name a famous painter and one of their works.",
    "Give me a synonym for happy.",
    "Why is the sky blue?",
    "Summarize the plot of Romeo and Juliet.",
    "How do vaccines work?",
    "Suggest a name for a bakery.",
    "What causes the seasons on Earth?",
    "Describe a cat to someone who has never seen one.",
    "What is the difference between weather and climate?",
    "Write a short thank-you note to a teacher.",
)


@dataclass(frozen=True)
class BenchRequest:
    index: int
    prompt_token_ids: tuple[int, ...]  # the tokenized chat prompt, BOS included if the tokenizer adds one
    adapter: RandomAdapter  # the task arms (a), (b) and (e) serve it with; (c) and (d) ignore it


def build_bench_requests(
    tokenizer, adapters: list[RandomAdapter], num_requests: int, zipf: float, seed: int = 0
) -> list[BenchRequest]:
    mix = ZipfTaskMix([adapter.task for adapter in adapters], exponent=zipf, seed=seed)
    by_task = {adapter.task: adapter for adapter in adapters}
    rng = random.Random(seed)
    requests = []
    for index in range(num_requests):
        text = f"{QUESTIONS[index % len(QUESTIONS)]} (request {index})"
        requests.append(BenchRequest(index, tuple(_tokenize(tokenizer, text)), by_task[mix.sample(rng)]))
    return requests


def _tokenize(tokenizer, text: str) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
    return list(tokenizer(text).input_ids)
