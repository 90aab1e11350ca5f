"""From a request's prompt to the token ids and token budget it is submitted with: sizes checked on the event loop,
tokenizing and chat templates on the offload pool, the task's virtual tokens from the registry."""

from __future__ import annotations

from dataclasses import dataclass

from prompt_store.access import Caller
from prompt_store.errors import UnknownTaskError
from server.engine.client import EngineClient
from server.engine.errors import RequestValidationError
from server.http.context import AppContext
from server.http.limits import check_messages, check_prompt_text
from server.http.task_reference import TaskReference
from server.http.token_budget import TokenBudget


async def prompt_token_ids(
    ctx: AppContext, prompt: str | tuple[int, ...], field: str, add_special_tokens: bool = True
) -> tuple[int, ...]:
    """Text (tokenized like `tokenizer(text).input_ids`) or token ids as given."""
    ctx.service.require_loaded()
    if not isinstance(prompt, str):
        if not prompt:
            raise RequestValidationError("the prompt is empty", param=field)
        return prompt
    check_prompt_text(ctx.config, prompt, field)
    return tuple(await ctx.offload.run(ctx.engine.tokenize, prompt, add_special_tokens))


@dataclass(frozen=True)
class ChatTemplating:
    """How messages become token ids; the defaults are /v1/chat/completions'."""

    add_generation_prompt: bool = True  # end with the assistant's turn opening
    continue_final_message: bool = False  # leave the last message open, for the model to continue
    add_special_tokens: bool = True  # as `tokenizer(text)` adds them to the template's text


CHAT_COMPLETIONS = ChatTemplating()


async def chat_token_ids(
    ctx: AppContext, messages: list[dict], templating: ChatTemplating = CHAT_COMPLETIONS
) -> tuple[int, ...]:
    """The chat template applied to `messages` ({"role", "content"} strings), then tokenized."""
    ctx.service.require_loaded()
    check_messages(ctx.config, messages)
    return tuple(await ctx.offload.run(_template_token_ids, ctx.engine, messages, templating))


def _template_token_ids(engine: EngineClient, messages: list[dict], templating: ChatTemplating) -> list[int]:
    text = engine.apply_chat_template(messages, templating.add_generation_prompt, templating.continue_final_message)
    return engine.tokenize(text, templating.add_special_tokens)


def token_budget(ctx: AppContext, token_ids: tuple[int, ...], task: TaskReference, caller: Caller) -> TokenBudget:
    """The budget against the task's version now (the active one, or the pinned `NAME@N`); a newer version with more
    virtual tokens admitted meanwhile only makes the engine end the sequence at the model's length, as it ends every
    sequence."""
    return TokenBudget(
        max_model_len=ctx.engine.max_model_len(),
        max_new_tokens_limit=ctx.config.max_new_tokens_limit,
        num_prompt_tokens=len(token_ids),
        num_virtual_tokens=num_virtual_tokens(ctx, task, caller),
    )


def num_virtual_tokens(ctx: AppContext, task: TaskReference, caller: Caller) -> int:
    """Of the referenced version: 0 for the base model; UnknownTaskError (404) for a task the caller may not see or
    a version no longer kept."""
    if task.name is None:
        return 0
    info = ctx.registry.get_task(task.name, caller)
    if task.version is None:
        return info.active.num_virtual_tokens
    version = next((v for v in info.versions if v.version == task.version), None)
    if version is None:
        kept = [v.version for v in info.versions]
        raise UnknownTaskError(f"task {task.name!r} has no version {task.version}; kept versions: {kept}")
    return version.num_virtual_tokens
