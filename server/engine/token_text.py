"""How one token reads on its own, for logprobs: its exact bytes, its text, and whether it is a special token.

A token's bytes are what it adds to the output, so a byte-level piece may hold part of a multi-byte character
(its text then shows U+FFFD where the part is, as vLLM's does; OpenAI's `bytes` keep the exact value).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_SENTENCEPIECE_BYTE = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # sentencepiece's byte fallback piece
_SENTENCEPIECE_SPACE = "\u2581"


@dataclass(frozen=True)
class TokenText:
    text: str  # `data` read as UTF-8, part of a character as U+FFFD; a special token's own name
    data: bytes  # what the token adds to the output's UTF-8 bytes
    is_special: bool  # BOS, EOS, chat markers: tokens the tokenizer lists as special


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's reversible map of the 256 bytes onto printable characters, inverted: character -> byte."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    chars, num_extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + num_extra)] = byte
            num_extra += 1
    return chars


class TokenTexts:
    """Each token id's TokenText, worked out once and kept (the vocabulary bounds the cache)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self._tokenizer = tokenizer
        self._special_ids = set(tokenizer.all_special_ids)
        decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
        self._byte_level = _byte_level_alphabet() if type(decoder).__name__ == "ByteLevel" else None
        self._cache: dict[int, TokenText] = {}

    def of(self, token_ids: Sequence[int]) -> list[TokenText]:
        return [self._cache.get(token_id) or self._render(token_id) for token_id in token_ids]

    def _render(self, token_id: int) -> TokenText:
        piece = cast(str | None, self._tokenizer.convert_ids_to_tokens(token_id))
        if token_id in self._special_ids or piece is None:
            name = piece or ""
            token = TokenText(name, name.encode(), True)
        else:
            data = self._bytes_of(piece)
            token = TokenText(data.decode("utf-8", errors="replace"), data, False)
        self._cache[token_id] = token
        return token

    def _bytes_of(self, piece: str) -> bytes:
        if self._byte_level is not None and all(char in self._byte_level for char in piece):
            return bytes(self._byte_level[char] for char in piece)
        if match := _SENTENCEPIECE_BYTE.fullmatch(piece):
            return bytes([int(match.group(1), 16)])
        return piece.replace(_SENTENCEPIECE_SPACE, " ").encode()
