"""Prompt text of a given length in tokens: exact with a local tokenizer, else about one token per word."""

from __future__ import annotations

import random

# Common English words; each is one token in the BPE vocabularies of Llama-, GPT-2- and SmolLM-style tokenizers
# when preceded by a space, so without a tokenizer "N words" is close to "N tokens".
WORDS = (  # noqa: SIM905 - a word list reads better as text
    "the of and to in is was for on that with as by at from his her an were are which this be or had it not "
    "but first one their its new after who they have has been also more two other into time all would there "
    "about only most some city year over world may when three during him could between where while state up "
    "before these than both many out then made people later can part under such well several used through "
    "school team war high name life being known day work long house game place old same light small "
    "music group book song line back since end left near way great early began found four own"
).split()


class PromptText:
    def __init__(self, tokenizer=None):
        """`tokenizer`: a transformers tokenizer (local files), or None to count words as tokens."""
        self.tokenizer = tokenizer

    def make(self, num_tokens: int, rng: random.Random) -> str:
        words = " ".join(rng.choice(WORDS) for _ in range(num_tokens))
        if self.tokenizer is None:
            return words
        ids = self.tokenizer(words, add_special_tokens=False).input_ids[:num_tokens]
        return self.tokenizer.decode(ids)

    @property
    def is_exact(self) -> bool:
        return self.tokenizer is not None


def load_tokenizer(path: str | None):
    """A tokenizer from a local folder, never the Hub; None when no path is given."""
    if not path:
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)
