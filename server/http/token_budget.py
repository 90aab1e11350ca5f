"""How many tokens a request may generate: its prompt, the task's virtual tokens and what it generates must fit the
model's length, with the engine's arithmetic (LLMEngine._check_length; a sequence ends once the three reach
max_model_len). Done here, before submitting, because only the HTTP layer knows which field the user set: an explicit
max_new_tokens / max_tokens that cannot fit is refused naming it, an omitted one becomes what fits."""

from __future__ import annotations

from dataclasses import dataclass

from server.engine.errors import RequestValidationError


@dataclass(frozen=True)
class TokenBudget:
    max_model_len: int  # the engine's: prompt + virtual + generated tokens of one sequence
    max_new_tokens_limit: int  # the server's bound on what any request may ask for
    num_prompt_tokens: int
    num_virtual_tokens: int  # of the task's active version now; 0 for the base model

    def max_new_tokens(self, requested: int | None, default: int, field: str, prompt_field: str) -> int:
        """`requested` if it fits, else a 4xx naming `field`; when None, `default` or as many as fit. A prompt that
        leaves no room is a 4xx naming `prompt_field`."""
        if requested is not None and requested > self.max_new_tokens_limit:
            limit = self.max_new_tokens_limit
            raise RequestValidationError(f"{field} must be <= {limit}, got {requested}", param=field)
        room = self.max_model_len - self.num_prompt_tokens - self.num_virtual_tokens
        if room < 1:
            raise RequestValidationError(
                f"the prompt ({prompt_field}) has {self.num_prompt_tokens} tokens "
                f"(+{self.num_virtual_tokens} virtual); "
                f"the model takes at most {self.max_model_len - 1} before generating",
                param=prompt_field,
            )
        if requested is None:
            return min(default, room)
        if requested > room:
            raise RequestValidationError(
                f"{field} is {requested}, but the prompt has {self.num_prompt_tokens} tokens "
                f"(+{self.num_virtual_tokens} virtual) and the model takes {self.max_model_len} in all: "
                f"at most {room} can be generated",
                param=field,
            )
        return requested
