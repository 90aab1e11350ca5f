"""`POST /tokenize` and `POST /detokenize`, as vLLM's: a prompt's token ids and count, and token ids back to text.

Authenticated as the inference routes (the same principal, scope and task visibility), but not admitted through a
tenant's quotas: nothing is generated, so no `tokens_per_minute` are spent, and the offload pool bounds the work.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from server.engine.errors import RequestValidationError
from server.http.auth import Principal, inference_principal
from server.http.context import AppContext, get_context
from server.http.limits import check_token_ids
from server.http.prepare import ChatTemplating, chat_token_ids, num_virtual_tokens, prompt_token_ids
from server.http.protocol_tokenize import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse
from server.http.task_reference import parse_task_reference

router = APIRouter()


@router.post("/tokenize", response_model=TokenizeResponse)
async def tokenize(
    body: TokenizeRequest,
    ctx: AppContext = Depends(get_context),
    principal: Principal = Depends(inference_principal),
) -> TokenizeResponse:
    """`tokens`: the prompt's own ids; `count`: those plus the task version's virtual tokens."""
    unsupported = body.unsupported_field()
    if unsupported is not None:
        raise RequestValidationError(f"{unsupported} is not supported", param=unsupported)
    num_virtual = _num_virtual_tokens(ctx, body.model, principal)
    token_ids = list(await _token_ids(ctx, body))
    token_strs = await ctx.offload.run(ctx.engine.token_strings, token_ids) if body.return_token_strs else None
    return TokenizeResponse(
        count=num_virtual + len(token_ids),
        max_model_len=ctx.engine.max_model_len(),
        tokens=token_ids,
        token_strs=token_strs,
    )


def _num_virtual_tokens(ctx: AppContext, model: str | None, principal: Principal) -> int:
    ctx.service.require_loaded()
    return num_virtual_tokens(ctx, parse_task_reference(model, ctx.config.base_model_id, "model"), principal.caller)


async def _token_ids(ctx: AppContext, body: TokenizeRequest) -> tuple[int, ...]:
    """As /v1/chat/completions tokenizes `messages` (with the body's template options), or /v1/completions `prompt`."""
    if body.messages is None:
        assert body.prompt is not None  # the body holds exactly one of them
        return await prompt_token_ids(ctx, body.prompt, "prompt", body.add_special_tokens)
    messages = [message.to_template() for message in body.messages]
    templating = ChatTemplating(body.add_generation_prompt, body.continue_final_message, body.add_special_tokens)
    return await chat_token_ids(ctx, messages, templating)


@router.post("/detokenize", response_model=DetokenizeResponse)
async def detokenize(
    body: DetokenizeRequest,
    ctx: AppContext = Depends(get_context),
    principal: Principal = Depends(inference_principal),
) -> DetokenizeResponse:
    _num_virtual_tokens(ctx, body.model, principal)  # an unknown task, or one the caller may not use: 404
    check_token_ids(ctx.config, body.tokens, ctx.engine.vocab_size(), "tokens")
    return DetokenizeResponse(prompt=await ctx.offload.run(ctx.engine.detokenize, body.tokens))
