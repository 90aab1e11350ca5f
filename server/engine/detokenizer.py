"""Incremental detokenization: the text each new token completes, never half a multi-byte character.

Each `add` decodes a window, never the text so far: the tokens that produced the previous text (as context, so a
tokenizer that strips a leading space or merges across tokens decodes them as it would in place) and the tokens
not yet turned into text. The second part is bounded too: a character needs at most 4 byte tokens, so after
MAX_UNREAD_TOKENS tokens that still end in half a character (or give no text at all: skipped special tokens) the
window is released as it decodes, U+FFFD included, and starts again after it.
"""

from __future__ import annotations

_CONTEXT_TOKENS = 5  # prompt tokens decoded as context, so tokenizers that strip a leading space keep it
MAX_UNREAD_TOKENS = 16  # tokens that may wait for a character to complete before being released anyway


class IncrementalDetokenizer:
    def __init__(self, tokenizer, prompt_token_ids, skip_special_tokens: bool = True):
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = list(prompt_token_ids[-_CONTEXT_TOKENS:])  # the window: context, then unread
        self._read_offset = len(self._ids)  # window tokens before this are context: already turned into text

    def _decode(self, ids) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip, clean_up_tokenization_spaces=False)

    def add(self, token_id: int) -> str:
        """Append one token; return the newly completed text (may be empty)."""
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[: self._read_offset])
        full_text = self._decode(self._ids)
        is_complete = len(full_text) > len(prefix_text) and not full_text.endswith("\ufffd")
        if is_complete or len(self._ids) - self._read_offset >= MAX_UNREAD_TOKENS:
            return self._release(prefix_text, full_text)
        return ""

    def flush(self) -> str:
        """Whatever text is still held back (an incomplete character at the very end)."""
        return self._release(self._decode(self._ids[: self._read_offset]), self._decode(self._ids))

    def _release(self, prefix_text: str, full_text: str) -> str:
        """The unread tokens' text; they become the context of the next window."""
        self._ids = self._ids[self._read_offset :]
        self._read_offset = len(self._ids)
        return full_text[len(prefix_text) :] if len(full_text) > len(prefix_text) else ""
