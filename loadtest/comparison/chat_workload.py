"""The chat workload of arms (g) and (h): every request carries the same long system prompt, as real chat traffic
does (a product's instructions, few-shot examples, RAG rules), then a question of its own; a fraction use the base
model, the rest a task by a Zipf mix."""

from __future__ import annotations

import random
from dataclasses import dataclass

from loadtest.adapters import RandomAdapter
from loadtest.comparison.workload import QUESTIONS
from loadtest.loadgen.workload import ZipfTaskMix

SYSTEM_TEXT = (
    "You are the support assistant of a travel company. Answer the customer's question in at most three "
    "sentences, in plain language, without lists. Be polite and concrete. If the question is about a booking, ask "
    "for the booking reference, and never invent one. If you do not know the answer, say so and suggest contacting "
    "the support desk, which is open from eight in the morning to eight in the evening, every day of the week. Do "
    "not give medical, legal or financial advice. Prices are in euros and include taxes. Refunds are possible up to "
    "fourteen days before departure; after that, a voucher is offered instead. Luggage rules depend on the airline: "
    "one cabin bag of up to eight kilograms is always included, and checked luggage can be added online. Children "
    "under two travel free on a parent's lap. Pets are allowed on trains but not on our partner buses. Travel "
    "insurance can be added until the day before departure. Keep every answer friendly, short and accurate, and "
    "always end by asking whether there is anything else you can help with today."
)


@dataclass(frozen=True)
class ChatRequest:
    index: int
    prompt_token_ids: tuple[int, ...]  # the chat template over the shared system prompt and one question
    task: str | None  # None: the base model
    num_shared_tokens: int  # leading tokens every request's prompt has in common (the system prompt's part)


def build_chat_requests(
    tokenizer,
    adapters: list[RandomAdapter],
    num_requests: int,
    system_tokens: int,
    base_fraction: float,
    zipf: float,
    seed: int = 0,
) -> list[ChatRequest]:
    system = _system_prompt(tokenizer, system_tokens)
    mix = ZipfTaskMix([adapter.task for adapter in adapters], exponent=zipf, base_fraction=base_fraction, seed=seed)
    rng = random.Random(seed + 1)
    prompts = [
        _chat_prompt(tokenizer, system, f"{QUESTIONS[i % len(QUESTIONS)]} (customer {i})") for i in range(num_requests)
    ]
    shared = _common_prefix_len(prompts)
    return [ChatRequest(i, prompt, mix.sample(rng), shared) for i, prompt in enumerate(prompts)]


def _system_prompt(tokenizer, num_tokens: int) -> str:
    """SYSTEM_TEXT repeated and cut to about `num_tokens` tokens."""
    ids = tokenizer(SYSTEM_TEXT, add_special_tokens=False).input_ids
    repeated = (ids * (num_tokens // len(ids) + 1))[:num_tokens]
    return tokenizer.decode(repeated)


def _chat_prompt(tokenizer, system: str, question: str) -> tuple[int, ...]:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = f"{system}\n\nQuestion: {question}\nAnswer:"
    return tuple(tokenizer(text).input_ids)


def _common_prefix_len(prompts: list[tuple[int, ...]]) -> int:
    first = prompts[0]
    return min(next((i for i, (a, b) in enumerate(zip(first, p)) if a != b), min(len(first), len(p))) for p in prompts)
