"""IncrementalDetokenizer: streamed deltas add up to what the tokenizer decodes, never half a character.

Tokenizers: a GPT-2-style byte-level BPE and a Llama-style Metaspace BPE with byte fallback (both trained here,
on text with multi-byte characters), and the default model's (SmolLM2) tokenizer.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    trainers,
)
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from server.engine.detokenizer import IncrementalDetokenizer

CORPUS = [
    "Hello world, the quick brown fox 🙂 jumps over the lazy dog.",
    "世界你好，今天天气很好。 日本語のテキスト",
    "héllo naïve café 😀🎉 über straße",
    "def f(x):\n    return x * 2  # ok",
] * 20


def _byte_level_bpe() -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<eos>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>")


def _metaspace_byte_fallback_bpe() -> PreTrainedTokenizerFast:
    """Llama-2 style: '▁' for spaces, unknown characters as <0xNN> byte tokens, the first space stripped."""
    tokenizer = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tokenizer.train_from_iterator(
        CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<eos>"], show_progress=False)
    )
    # the 256 byte tokens are ordinary vocabulary (as in Llama's), not special tokens that decoding would skip
    spec = json.loads(tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    tokenizer = Tokenizer.from_str(json.dumps(spec))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>", unk_token="<unk>")


@pytest.fixture(scope="module")
def tokenizers_under_test(request):
    found = _Tokenizers(byte_level=_byte_level_bpe(), metaspace=_metaspace_byte_fallback_bpe())
    found["smollm2"] = AutoTokenizer.from_pretrained(request.getfixturevalue("smollm2_dir"))
    return found


class _Tokenizers(dict):
    def __repr__(self) -> str:  # keeps hypothesis' falsifying examples readable
        return f"<tokenizers {sorted(self)}>"


TOKENIZER_NAMES = ["byte_level", "metaspace", "smollm2"]


def _stream(tokenizer, prompt_ids: list[int], generated_ids: list[int]) -> list[str]:
    detok = IncrementalDetokenizer(tokenizer, prompt_ids)
    deltas = [detok.add(token_id) for token_id in generated_ids]
    deltas.append(detok.flush())
    return deltas


def _decode(tokenizer, ids) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def _expected(tokenizer, prompt_ids: list[int], generated_ids: list[int]) -> str:
    full = _decode(tokenizer, prompt_ids + generated_ids)
    prompt = _decode(tokenizer, prompt_ids)
    assert full.startswith(prompt)
    return full[len(prompt) :]


_chars = st.sampled_from(list("ab Zé\nü.,") + ["世", "界", "你", "🙂", "😀", "🎉", "☃", "\u0301", "\u200d", "ß", "日"])
_texts = st.text(_chars, max_size=30)


@pytest.mark.parametrize("name", TOKENIZER_NAMES)
def test_emoji_and_cjk_stream_whole_characters(tokenizers_under_test, name):
    tokenizer = tokenizers_under_test[name]
    text = "Hi 🙂 世界 ☃ café 😀🎉!"
    ids = tokenizer.encode(text, add_special_tokens=False)
    deltas = _stream(tokenizer, [], ids)
    assert "".join(deltas) == _decode(tokenizer, ids)
    assert all("\ufffd" not in d for d in deltas)
    assert sum(1 for d in deltas if d) > 3  # it streams, not all at the end


@pytest.mark.parametrize("name", TOKENIZER_NAMES)
def test_a_character_split_over_byte_tokens_is_held_until_complete(tokenizers_under_test, name):
    tokenizer = tokenizers_under_test[name]
    prompt = tokenizer.encode("say", add_special_tokens=False)
    ids = tokenizer.encode(" ☃", add_special_tokens=False)  # rare: bytes, not one token, in all of these
    detok = IncrementalDetokenizer(tokenizer, prompt)
    deltas = [detok.add(i) for i in ids]
    assert len(ids) >= 3
    assert deltas[-1].endswith("☃") and all("☃" not in d and "\ufffd" not in d for d in deltas[:-1])
    assert deltas[-3:-1] == ["", ""]  # the first two bytes of the three give no text
    assert "".join(deltas) == _expected(tokenizer, prompt, ids)


@pytest.mark.parametrize("name", TOKENIZER_NAMES)
def test_special_tokens_add_no_text(tokenizers_under_test, name):
    tokenizer = tokenizers_under_test[name]
    ids = tokenizer.encode("ab", add_special_tokens=False)
    detok = IncrementalDetokenizer(tokenizer, [])
    first = [detok.add(i) for i in ids]
    assert detok.add(tokenizer.eos_token_id) == ""
    rest = [detok.add(i) for i in ids] + [detok.flush()]
    generated = ids + [tokenizer.eos_token_id] + ids
    assert "".join(first + rest) == _decode(tokenizer, generated)
    assert _decode(tokenizer, generated).replace(" ", "") == "abab"


@pytest.mark.parametrize("name", TOKENIZER_NAMES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompt_text=_texts, generated_text=_texts)
def test_deltas_add_up_to_the_decoded_text(tokenizers_under_test, name, prompt_text, generated_text):
    tokenizer = tokenizers_under_test[name]
    prompt_ids = tokenizer.encode(prompt_text, add_special_tokens=False) if prompt_text else []
    generated_ids = tokenizer.encode(generated_text, add_special_tokens=False)
    deltas = _stream(tokenizer, prompt_ids, generated_ids)
    assert "".join(deltas) == _expected(tokenizer, prompt_ids, generated_ids)
    if not prompt_ids:
        assert "".join(deltas) == _decode(tokenizer, generated_ids)
    assert all("\ufffd" not in d for d in deltas)  # never half a character


# Byte-level decoders only: a byte-fallback decoder turns every byte of an invalid run into U+FFFD, so one bad
# byte token can change text decoded before it, which no stream can take back.
@pytest.mark.parametrize("name", ["byte_level", "smollm2"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompt_text=_texts, data=st.data())
def test_arbitrary_token_ids_add_up_to_the_decoded_text(tokenizers_under_test, name, prompt_text, data):
    """A model may emit any ids, including byte tokens that never complete a character."""
    tokenizer = tokenizers_under_test[name]
    prompt_ids = tokenizer.encode(prompt_text, add_special_tokens=False) if prompt_text else []
    vocab = len(tokenizer)
    generated_ids = data.draw(st.lists(st.integers(0, vocab - 1), max_size=12))
    deltas = _stream(tokenizer, prompt_ids, generated_ids)
    assert "".join(deltas) == _expected(tokenizer, prompt_ids, generated_ids)


class _CountingTokenizer:
    """Delegates to a tokenizer and records how many ids each decode call is given."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self.decoded_lengths: list[int] = []

    def decode(self, ids, **kwargs) -> str:
        self.decoded_lengths.append(len(ids))
        return self._tokenizer.decode(ids, **kwargs)


@pytest.mark.parametrize("name", ["byte_level", "smollm2"])
def test_work_per_token_is_bounded_however_long_the_text_and_however_stuck(tokenizers_under_test, name):
    """Each token costs two decodes of a bounded window, not of the text so far: also through long runs of skipped
    special tokens and of byte tokens that never complete a character (the window used to grow with both)."""
    from server.engine.detokenizer import MAX_UNREAD_TOKENS

    tokenizer = tokenizers_under_test[name]
    text_ids = tokenizer.encode(CORPUS[0] + CORPUS[1] + CORPUS[2], add_special_tokens=False)
    lead_byte = tokenizer.encode(" ☃", add_special_tokens=False)[-3]  # the first of the snowman's three bytes
    generated = text_ids * 20 + [tokenizer.eos_token_id] * 100 + text_ids + [lead_byte] * 100 + text_ids
    counting = _CountingTokenizer(tokenizer)
    detok = IncrementalDetokenizer(counting, text_ids[:7])
    deltas = [detok.add(token_id) for token_id in generated]
    assert len(counting.decoded_lengths) == 2 * len(generated)
    assert max(counting.decoded_lengths) <= 2 * MAX_UNREAD_TOKENS
    deltas.append(detok.flush())
    assert "".join(deltas) == _expected(tokenizer, text_ids[:7], generated)
