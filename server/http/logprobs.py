"""Token logprobs in the shapes clients read: OpenAI completions (`tokens`, `token_logprobs`, `top_logprobs`,
`text_offset`), OpenAI chat (`content` entries with `bytes` and `top_logprobs`) and TGI (`tokens`, `top_tokens`,
`prefill`). A token reads as the engine renders it alone (EngineClient.token_texts)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from server.engine.request import TokenLogprob
from server.engine.token_text import TokenText
from server.http.protocol_openai import ChatLogprobs, ChatTokenLogprob, ChatTopLogprob, CompletionLogprobs
from server.http.protocol_tgi import PrefillToken, Token

# JSON has no -inf: a token the processed logits rule out (logit_bias -100, a grammar) reads this, as in vLLM.
LOGPROB_FLOOR = -9999.0

TokenRenderer = Callable[[Sequence[int]], list[TokenText]]


def finite(logprob: float) -> float:
    return logprob if logprob >= LOGPROB_FLOOR else LOGPROB_FLOOR  # NaN fails the comparison too


def _texts(render: TokenRenderer, token_ids: Iterable[int], entries: Iterable[TokenLogprob | None]) -> dict:
    """token id -> TokenText for the tokens and all their alternatives, in one call."""
    ids = set(token_ids)
    for entry in entries:
        if entry is not None:
            ids.update(token_id for token_id, _ in entry.top)
    unique = list(ids)
    return dict(zip(unique, render(unique), strict=True))


class CompletionLogprobsWriter:
    """One choice's completions `logprobs`, a chunk at a time: `text_offset` runs on from the previous chunk."""

    def __init__(self, render: TokenRenderer):
        self._render = render
        self._text_offset = 0

    def write(self, token_ids: Sequence[int], entries: Sequence[TokenLogprob | None]) -> CompletionLogprobs:
        """`entries[i]` is `token_ids[i]`'s; None where a token has no logprob (a prompt's first token)."""
        texts = _texts(self._render, token_ids, entries)
        logprobs = CompletionLogprobs()
        for token_id, entry in zip(token_ids, entries, strict=True):
            text = texts[token_id].text
            logprobs.tokens.append(text)
            logprobs.text_offset.append(self._text_offset)
            self._text_offset += len(text)
            if entry is None:
                logprobs.token_logprobs.append(None)
                logprobs.top_logprobs.append(None)
                continue
            logprobs.token_logprobs.append(finite(entry.logprob))
            top = {texts[top_id].text: finite(logprob) for top_id, logprob in entry.top}
            top.setdefault(text, finite(entry.logprob))  # OpenAI's: the chosen token is always among them
            logprobs.top_logprobs.append(top)
        return logprobs


def prompt_entries(
    prompt_ids: Sequence[int], prompt_logprobs: Sequence[TokenLogprob | None] | None
) -> list[TokenLogprob | None]:
    """One entry per prompt token (None for the first, and for all if the engine sent none)."""
    return list(prompt_logprobs) if prompt_logprobs is not None else [None] * len(prompt_ids)


def chat_logprobs(render: TokenRenderer, entries: Sequence[TokenLogprob]) -> ChatLogprobs:
    texts = _texts(render, (entry.token_id for entry in entries), entries)

    def top(token_id: int, logprob: float) -> ChatTopLogprob:
        token = texts[token_id]
        return ChatTopLogprob(token=token.text, logprob=finite(logprob), bytes=list(token.data))

    content = [
        ChatTokenLogprob(
            **top(entry.token_id, entry.logprob).model_dump(), top_logprobs=[top(*pair) for pair in entry.top]
        )
        for entry in entries
    ]
    return ChatLogprobs(content=content)


def tgi_tokens(render: TokenRenderer, entries: Sequence[TokenLogprob]) -> tuple[list[Token], list[list[Token]]]:
    """Each generated token, and each step's alternatives (TGI's `tokens` and `top_tokens`)."""
    texts = _texts(render, (entry.token_id for entry in entries), entries)

    def token(token_id: int, logprob: float) -> Token:
        text = texts[token_id]
        return Token(id=token_id, text=text.text, logprob=finite(logprob), special=text.is_special)

    tokens = [token(entry.token_id, entry.logprob) for entry in entries]
    return tokens, [[token(*pair) for pair in entry.top] for entry in entries]


def tgi_prefill(
    render: TokenRenderer, prompt_ids: Sequence[int], entries: Sequence[TokenLogprob | None]
) -> list[PrefillToken]:
    texts = render(prompt_ids)
    return [
        PrefillToken(id=token_id, text=text.text, logprob=None if entry is None else finite(entry.logprob))
        for token_id, text, entry in zip(prompt_ids, texts, entries, strict=True)
    ]
