"""A classification task's label names: the config's optional `labels` field, or an upload's `labels` part merged
into the config.

Torch-free on purpose: the HTTP upload route merges the `labels` part with `with_labels`, and the HTTP layer must
not import torch.
"""

from __future__ import annotations

import json

from prompt_store.errors import InvalidPromptError, PromptTooLargeError
from prompt_store.json_text import loads_strict, show

LABELS_FIELD = "labels"  # the adapter_config.json field, and the upload's multipart part
MAX_NUM_LABELS = 1024  # rows of a classifier head; one label name each
MAX_LABEL_CHARS = 128


def default_labels(num_labels: int) -> tuple[str, ...]:
    """What transformers names unnamed labels (`config.id2label`)."""
    return tuple(f"LABEL_{i}" for i in range(num_labels))


def parse_labels(value: object, source: str) -> tuple[str, ...]:
    """A JSON list of distinct, non-empty strings of at most MAX_LABEL_CHARS; `source` names where it came from."""
    if not isinstance(value, list):
        raise InvalidPromptError(f"{source} must be a JSON list of label names, got {type(value).__name__}")
    if len(value) > MAX_NUM_LABELS:
        raise PromptTooLargeError(f"{source} has {len(value)} entries; the limit is {MAX_NUM_LABELS}")
    for index, label in enumerate(value):
        if not isinstance(label, str) or not label:
            raise InvalidPromptError(f"{source}[{index}] must be a non-empty string, got {show(label)}")
        if len(label) > MAX_LABEL_CHARS:
            raise InvalidPromptError(f"{source}[{index}] is {len(label)} characters; the limit is {MAX_LABEL_CHARS}")
    seen: set[str] = set()
    for label in value:
        if label in seen:
            raise InvalidPromptError(f"{source} names {show(label)} twice; label names must be distinct")
        seen.add(label)
    return tuple(value)


def with_labels(config_bytes: bytes, labels_bytes: bytes) -> bytes:
    """adapter_config.json with its `labels` field set to the upload's `labels` part (a JSON list of strings).

    A config that is not a JSON object is returned unchanged: the upload's validation reports it in its own words.
    """
    source = f"multipart part {LABELS_FIELD!r}"
    try:
        labels = loads_strict(labels_bytes)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidPromptError(f"{source} is not valid JSON (send a list of label names): {str(exc)[:120]}") from None
    parsed = parse_labels(labels, source)
    try:
        config = loads_strict(config_bytes)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return config_bytes
    if not isinstance(config, dict):
        return config_bytes
    return json.dumps(config | {LABELS_FIELD: list(parsed)}, indent=2).encode()
