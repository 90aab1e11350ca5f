"""From a request's prompt to the token ids and token budget it is submitted with: sizes checked on the event loop,
tokenizing and chat templates on the offload pool, the task's virtual tokens from the registry."""

from __future__ import annotations

from prompt_store.access import Caller
from server.engine.client import EngineClient
from server.engine.errors import RequestValidationError
from server.http.context import AppContext
from server.http.limits import check_messages, check_prompt_text
from server.http.token_budget import TokenBudget


async def prompt_token_ids(ctx: AppContext, prompt: str | tuple[int, ...], field: str) -> tuple[int, ...]:
    """Text (tokenized like `tokenizer(text).input_ids`) or token ids as given."""
    ctx.service.require_loaded()
    if not isinstance(prompt, str):
        if not prompt:
            raise RequestValidationError("the prompt is empty", param=field)
        return prompt
    check_prompt_text(ctx.config, prompt, field)
    return tuple(await ctx.offload.run(ctx.engine.tokenize, prompt))


async def chat_token_ids(ctx: AppContext, messages: list[dict]) -> tuple[int, ...]:
    """The chat template applied to `messages` ({"role", "content"} strings), then tokenized."""
    ctx.service.require_loaded()
    check_messages(ctx.config, messages)
    return tuple(await ctx.offload.run(_template_token_ids, ctx.engine, messages))


def _template_token_ids(engine: EngineClient, messages: list[dict]) -> list[int]:
    return engine.tokenize(engine.apply_chat_template(messages))


def token_budget(ctx: AppContext, token_ids: tuple[int, ...], task: str | None, caller: Caller) -> TokenBudget:
    """The budget against the task's active version now; a newer version with more virtual tokens admitted meanwhile
    only makes the engine end the sequence at the model's length, as it ends every sequence."""
    is_base = task in (None, "", ctx.config.base_model_id)
    num_virtual_tokens = 0 if is_base or task is None else ctx.registry.get_task(task, caller).active.num_virtual_tokens
    return TokenBudget(
        max_model_len=ctx.engine.max_model_len(),
        max_new_tokens_limit=ctx.config.max_new_tokens_limit,
        num_prompt_tokens=len(token_ids),
        num_virtual_tokens=num_virtual_tokens,
    )
