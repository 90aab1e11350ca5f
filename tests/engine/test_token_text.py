"""TokenTexts: a token's bytes are exactly what it adds to the text, part of a character included."""

from __future__ import annotations

import pytest
from test_detokenizer import _byte_level_bpe, _metaspace_byte_fallback_bpe
from transformers import AutoTokenizer

from server.engine.token_text import TokenTexts

TEXT = "Hi 🙂 世界 café"


@pytest.fixture(scope="module")
def tokenizers(request):
    return {
        "byte_level": _byte_level_bpe(),
        "metaspace": _metaspace_byte_fallback_bpe(),
        "smollm2": AutoTokenizer.from_pretrained(request.getfixturevalue("smollm2_dir")),
    }


@pytest.mark.parametrize("name, leading", [("byte_level", ""), ("smollm2", ""), ("metaspace", " ")])
def test_token_bytes_add_up_to_the_text(tokenizers, name, leading):
    tokenizer = tokenizers[name]
    tokens = TokenTexts(tokenizer).of(tokenizer.encode(TEXT, add_special_tokens=False))
    assert b"".join(token.data for token in tokens) == (leading + TEXT).encode()  # metaspace marks the first space
    assert all(token.text == token.data.decode("utf-8", errors="replace") for token in tokens)
    if name != "metaspace":  # its vocabulary learnt these characters whole
        assert any("\ufffd" in token.text for token in tokens)  # some token holds part of a character


def test_special_tokens_read_as_their_name(tokenizers):
    tokenizer = tokenizers["smollm2"]
    [token] = TokenTexts(tokenizer).of([tokenizer.eos_token_id])
    assert token.is_special and token.text == tokenizer.eos_token
