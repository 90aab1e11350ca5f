"""Checks safetensors bytes completely before the safetensors library sees them; never unpickles anything.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON header, then the data section.
Decisions, matching the safetensors Rust validator so that a file we accept is one every reader accepts:
- the tensors' byte ranges must tile the data section exactly: no gaps, no overlaps, no trailing bytes;
- the header may end with spaces (the library pads it to 8-byte alignment), nothing else after the JSON object;
- duplicate JSON keys are refused (readers disagree on which one wins).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import safetensors
import safetensors.torch
import torch

from prompt_store.errors import InvalidPromptError
from prompt_store.json_text import refuse_constant

HEADER_LENGTH_BYTES = 8
MAX_HEADER_BYTES = 1 << 20  # PEFT prompt headers are < 1 KiB; the cap bounds the JSON work an upload can cause
MAX_TENSORS = 64  # a prompt file holds 1 to 3 tensors
MAX_RANK = 8
DTYPE_SIZES = {"F16": 2, "BF16": 2, "F32": 4}
TORCH_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}
PICKLE_MESSAGE = "pickled files are refused; upload the adapter_model.safetensors written by PEFT save_pretrained"


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as the header describes it."""

    name: str
    dtype: str  # safetensors dtype name, one of DTYPE_SIZES
    shape: tuple[int, ...]
    begin: int  # byte offset into the data section
    end: int  # exclusive


def read_safetensors(data: bytes) -> dict[str, torch.Tensor]:
    """Validate `data` as a safetensors file of float tensors and load it; InvalidPromptError on any flaw."""
    entries = parse_header(data)
    try:
        tensors = safetensors.torch.load(bytes(data))
    except safetensors.SafetensorError as exc:  # defence in depth: parse_header should have caught it
        raise InvalidPromptError(f"adapter_model.safetensors could not be read: {exc}") from None
    _check_loaded_matches(entries, tensors)
    return tensors


def parse_header(data: bytes) -> dict[str, TensorEntry]:
    """The header's tensor entries, after every structural check; the data bytes are not touched."""
    header_length = _header_length(data)
    header = _decode_header_json(data[HEADER_LENGTH_BYTES : HEADER_LENGTH_BYTES + header_length])
    data_length = len(data) - HEADER_LENGTH_BYTES - header_length
    entries = {name: _parse_entry(name, value) for name, value in header.items() if name != "__metadata__"}
    _check_metadata(header.get("__metadata__"))
    if len(entries) > MAX_TENSORS:
        raise _invalid(f"holds {len(entries)} tensors; at most {MAX_TENSORS} are accepted")
    _check_tiling(entries, data_length)
    return entries


def looks_pickled(data: bytes) -> bool:
    """True for torch.save / pickle files: a zip archive (torch >= 1.6) or a raw pickle stream."""
    if data[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return True
    if len(data) >= 2 and data[0] == 0x80 and 1 <= data[1] <= 5:  # PROTO opcode, pickle protocols 2..5
        return True
    # protocol 0/1 pickles start with a MARK, dict, list or GLOBAL opcode and always end with STOP
    return data[:1] in (b"(", b"}", b"]", b"c") and data.rstrip(b"\n")[-1:] == b"."


def _header_length(data: bytes) -> int:
    if len(data) < HEADER_LENGTH_BYTES + 2:
        _refuse_if_pickled(data)
        raise _invalid(f"is {len(data)} bytes long, too short for a safetensors file")
    length = int.from_bytes(data[:HEADER_LENGTH_BYTES], "little")
    remaining = len(data) - HEADER_LENGTH_BYTES
    is_plausible = 2 <= length <= min(remaining, MAX_HEADER_BYTES) and data[HEADER_LENGTH_BYTES] == ord("{")
    if not is_plausible:
        # A pickle's first bytes read as an absurd length, so check the magic before naming the length as the flaw.
        _refuse_if_pickled(data)
    if length > MAX_HEADER_BYTES:
        raise _invalid(f"declares a {length}-byte header; at most {MAX_HEADER_BYTES} bytes are accepted")
    if length > remaining:
        raise _invalid(f"declares a {length}-byte header but only {remaining} bytes follow")
    if not is_plausible:
        raise _invalid("is not a safetensors file (the header is not a JSON object)")
    return length


def _refuse_if_pickled(data: bytes) -> None:
    if looks_pickled(data):
        raise InvalidPromptError(PICKLE_MESSAGE)


def _decode_header_json(raw: bytes) -> dict:
    try:
        text = raw.decode("utf-8").rstrip(" ")
        header = json.loads(text, object_pairs_hook=_refuse_duplicate_keys, parse_constant=refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _invalid(f"has a header that is not valid JSON: {_short(exc)}") from None
    if not isinstance(header, dict):
        raise _invalid("has a header that is not a JSON object")
    return header


def _refuse_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        duplicate = next(key for key in keys if keys.count(key) > 1)
        raise ValueError(f"duplicate key {duplicate!r}")
    return dict(pairs)


def _parse_entry(name: str, value: object) -> TensorEntry:
    shown = _short(repr(name), 66)
    if not isinstance(value, dict) or set(value) != {"dtype", "shape", "data_offsets"}:
        raise _invalid(f"describes tensor {shown} without exactly the fields dtype, shape and data_offsets")
    dtype, shape, offsets = value["dtype"], value["shape"], value["data_offsets"]
    if not isinstance(dtype, str):
        raise _invalid(f"gives tensor {shown} a dtype that is not a string: {dtype!r}")
    if dtype not in DTYPE_SIZES:
        raise _invalid(f"tensor {shown} has dtype {dtype[:32]}; only F16, BF16 and F32 are accepted")
    if not _is_int_list(shape) or len(shape) > MAX_RANK or any(size < 0 for size in shape):
        raise _invalid(f"gives tensor {shown} an invalid shape {_short(shape)}")
    if not _is_int_list(offsets) or len(offsets) != 2 or not 0 <= offsets[0] <= offsets[1]:
        raise _invalid(f"gives tensor {shown} invalid data_offsets {_short(offsets)}")
    expected = math.prod(shape) * DTYPE_SIZES[dtype]
    if offsets[1] - offsets[0] != expected:
        raise _invalid(
            f"gives tensor {shown} {offsets[1] - offsets[0]} bytes, "
            f"but shape {_short(shape)} of {dtype} needs {_short(expected)}"
        )
    return TensorEntry(name, dtype, tuple(shape), offsets[0], offsets[1])


def _is_int_list(value: object) -> bool:
    return isinstance(value, list) and all(type(item) is int for item in value)


def _check_metadata(metadata: object) -> None:
    if metadata is None:
        return
    is_str_map = isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    if not is_str_map:
        raise _invalid("has __metadata__ that is not a map of strings")


def _check_tiling(entries: dict[str, TensorEntry], data_length: int) -> None:
    position = 0
    for entry in sorted(entries.values(), key=lambda e: (e.begin, e.end)):
        if entry.begin != position:
            problem = "overlaps another tensor" if entry.begin < position else "leaves a gap before it"
            raise _invalid(
                f"tensor {_short(repr(entry.name), 66)} {problem} "
                f"(data_offsets start {entry.begin}, expected {position})"
            )
        position = entry.end
    if position != data_length:
        if position > data_length:
            raise _invalid(f"is truncated: tensors need {position} data bytes, the file has {data_length}")
        raise _invalid(f"has {data_length - position} unexpected bytes after the last tensor")


def _check_loaded_matches(entries: dict[str, TensorEntry], tensors: dict[str, torch.Tensor]) -> None:
    for name, entry in entries.items():
        tensor = tensors.get(name)
        if tensor is None or tensor.dtype != TORCH_DTYPES[entry.dtype] or tuple(tensor.shape) != entry.shape:
            raise _invalid(f"tensor {_short(repr(name), 66)} did not load as its header describes it")
    if set(tensors) != set(entries):
        raise _invalid("loaded tensors differ from the header")


def _invalid(problem: str) -> InvalidPromptError:
    return InvalidPromptError(f"adapter_model.safetensors {problem}")


def _short(value: object, limit: int = 80) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."
