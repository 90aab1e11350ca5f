"""Bodies of `POST /tokenize` and `POST /detokenize`, as vLLM's; unknown request fields are ignored."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from server.http.protocol_fields import Text
from server.http.protocol_openai import ChatMessage

# vLLM's chat-tokenize fields that would change the template's output, which promptswap does not take: refused
# when set, rather than counting tokens of a prompt the chat route would never build.
UNSUPPORTED_CHAT_FIELDS = ("chat_template", "chat_template_kwargs", "tools", "documents")


class TokenizeRequest(BaseModel):
    """vLLM's TokenizeCompletionRequest (`prompt`) and TokenizeChatRequest (`messages`) in one body: exactly one."""

    model_config = ConfigDict(extra="allow")  # kept, so the unsupported vLLM fields can be named

    model: str | None = None  # a task, NAME@N or the base model id; None: the base model
    prompt: Text | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    # vLLM's default for messages is false; here as /v1/chat/completions tokenizes the template's text, so `count`
    # is the prompt_tokens a chat request with these messages reports.
    add_special_tokens: bool = True
    add_generation_prompt: bool = True  # messages only
    continue_final_message: bool = False  # messages only: leave the last message open for the model to continue
    return_token_strs: bool = False  # add `token_strs`: each id's vocabulary entry

    @model_validator(mode="after")
    def _one_prompt(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt and messages")
        if self.add_generation_prompt and self.continue_final_message and self.messages is not None:
            raise ValueError("add_generation_prompt and continue_final_message cannot both be true")
        return self

    def unsupported_field(self) -> str | None:
        """The first vLLM field set that promptswap does not honour."""
        extra = self.model_extra or {}
        return next((name for name in UNSUPPORTED_CHAT_FIELDS if extra.get(name) is not None), None)


class TokenizeResponse(BaseModel):
    count: int  # len(tokens) + the task version's virtual tokens
    max_model_len: int  # prompt + virtual + generated tokens one sequence may hold
    tokens: list[int]  # the prompt's own token ids (virtual tokens have none)
    token_strs: list[str] | None = None  # with return_token_strs


class DetokenizeRequest(BaseModel):
    model: str | None = None  # checked as in /tokenize: an unknown task is 404
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str
